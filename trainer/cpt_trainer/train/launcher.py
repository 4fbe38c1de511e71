"""`cpt-trainer launch [torchrun options] -- train --config FILE`: torchrun, with exit codes that say what happened.

The ranks run under torch's elastic agent in this process, exactly as `torchrun --no-python`
runs them (same options, same `PET_*` environment defaults the Kubeflow training operator
sets, same static rendezvous on MASTER_ADDR:MASTER_PORT). torchrun itself exits 1 whatever
went wrong; this launcher exits with the root cause instead, so a PyTorchJob with
`restartPolicy: ExitCode` retries transient failures (>= 128) and fails permanent ones (1-127):

    0        every rank exited 0
    1-127    the root-cause rank's own code (2 invalid config or input, 1 crash or CUDA OOM
             in training: deterministic for a config); 1 also when the launcher itself crashes
             on anything but a rendezvous/network failure (a bug: retrying would not help)
    128+N    the root-cause rank was killed by signal N (137: SIGKILL, e.g. the OOM killer),
             or exited 128+N itself (143: it stopped on SIGTERM after a checkpoint)
    143      the launcher got SIGTERM (preemption): it forwarded SIGTERM to the ranks, which
             save a checkpoint after the current step and stop, and waited `--shutdown-timeout`
    200      COMM_ERROR_EXIT: the root-cause rank failed on communication (a peer rank or node
             lost, a collective or store timed out: DistError, gloo/NCCL connection errors)
    201      RENDEZVOUS_ERROR_EXIT: the launcher's rendezvous or store failed (the master
             unreachable, a rendezvous timeout) before or while the ranks ran

128+N for a signal N stays below 200 (Linux signals end at 64), so 200 and 201 never collide with it.

The root cause is the first failure: ranks the agent SIGTERMed after it come last; then the
earliest error-file time (ranks write one, see `record_rank_error`) or, without one (killed by a
signal), the last time ExitClock saw the rank alive; a signal death wins a tie. The last line on stderr names it, e.g.
`cpt-trainer launch: rank 1 exited 2: <the last line of its error message>`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

PROG = "cpt-trainer launch"
# Seconds the ranks get, after a SIGTERM, to finish their step and save before SIGKILL
# (torch's own default is 30 s: too short to save a large model). The pod's
# terminationGracePeriodSeconds must be longer (render/pytorchjob.py).
DEFAULT_SHUTDOWN_TIMEOUT_S = 300
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"
# Transient failures with their own codes (>= 128: the PyTorchJob's ExitCode policy retries them).
COMM_ERROR_EXIT = 200  # a rank's collective or store failed: a peer lost, a timeout (is_communication_error)
RENDEZVOUS_ERROR_EXIT = 201  # the launcher's rendezvous or store failed (launcher_failure_code)


# ---------------------------------------------------------------------------- rank side


def record_rank_error(message: str, callstack: str | None = None) -> None:
    """Write this rank's error file for the launcher (once; a no-op outside the elastic agent).

    Torch's error-file format (the agent's ProcessFailure reads it), plus `cpt_time`: a float
    time, finer than torch's whole seconds, so the launcher can tell which rank failed first.
    """
    path = os.environ.get(ERROR_FILE_ENV)
    if not path or os.path.exists(path):
        return
    now = time.time()
    data = {
        "message": {"message": message, "extraInfo": {"py_callstack": callstack or message, "timestamp": str(int(now))}},
        "cpt_time": now,
    }
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fp:
            json.dump(data, fp)
        os.replace(tmp, path)
    except OSError:
        pass  # the launcher falls back to the exit code


def _exception_lines(exc: BaseException) -> list[str]:
    """`Type: message` of an exception, split in lines (never empty)."""
    return f"{type(exc).__name__}: {exc}".strip().splitlines() or [type(exc).__name__]


def record_exception(exc: BaseException) -> None:
    """Error file for an uncaught exception: its last line as the message, the traceback kept."""
    record_rank_error(_exception_lines(exc)[-1], "".join(traceback.format_exception(exc)))


# Lowercased pieces of the messages gloo and NCCL raise as a plain RuntimeError when a peer is
# gone or a collective timed out (gloo: "[.../gloo/transport/tcp/pair.cc:553] Connection closed by
# peer [127.0.0.1]:52906 ...", seen on torch 2.13 when a peer rank is SIGKILLed).
_COMM_MARKERS = (
    "gloo/transport/",
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "application timeout caused pair closure",
    "timed out waiting",
    "nccl communicator was aborted",
    "watchdog caught collective operation timeout",
    "collective operation timeout",
    "ncclremoteerror",
    "ncclsystemerror",
    "remote process exited or there was a network error",
)


def is_communication_error(exc: BaseException) -> bool:
    """True for a distributed communication failure, which is transient (a retry after the lost
    peer is replaced succeeds): torch.distributed.DistError (DistBackendError, DistNetworkError,
    DistStoreError) or a RuntimeError with a gloo/NCCL connection or timeout message, here or in
    its cause/context chain. Never a torch.OutOfMemoryError (deterministic for a config)."""
    dist = sys.modules.get("torch.distributed")  # not imported: no collective ever ran
    torch = sys.modules.get("torch")
    dist_error = getattr(dist, "DistError", None)
    oom = getattr(torch, "OutOfMemoryError", None)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        if oom is not None and isinstance(current, oom):
            return False
        if dist_error is not None and isinstance(current, dist_error):
            return True
        if isinstance(current, RuntimeError):
            text = str(current).lower()
            if any(marker in text for marker in _COMM_MARKERS):
                return True
        current = current.__cause__ or current.__context__
    return False


def record_communication_failure(prog: str, exc: BaseException) -> int:
    """A rank's communication error: the traceback and one line on stderr, the error file for the
    launcher (whose root-cause logic then reports COMM_ERROR_EXIT); returns the code."""
    text = "".join(traceback.format_exception(exc))
    line = (f"{prog}: communication error (a peer rank or node lost, or a collective timed out; "
            f"transient, exit {COMM_ERROR_EXIT}): {_exception_lines(exc)[0].strip()}")  # fmt: skip
    print(text.rstrip() + "\n" + line, file=sys.stderr, flush=True)
    record_rank_error(line, text)
    return COMM_ERROR_EXIT


# ---------------------------------------------------------------------------- launcher side


def launcher_failure_code(exc: BaseException) -> int:
    """The launcher's own failure (not a rank's): RENDEZVOUS_ERROR_EXIT for a rendezvous, store or
    network failure or a timeout (the master pod not up yet or gone: transient), else 1."""
    try:
        from torch.distributed.elastic.rendezvous import RendezvousError
    except ImportError:  # pragma: no cover - torch always has it
        RendezvousError = ()  # type: ignore[assignment]
    if isinstance(exc, (RendezvousError, TimeoutError, ConnectionError)) or is_communication_error(exc):
        return RENDEZVOUS_ERROR_EXIT
    return 1


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_code_of(exitcode: int) -> int:
    """A rank's Popen-style exit code (negative: killed by that signal) as a shell exit code."""
    if exitcode < 0:
        return 128 + (-exitcode)
    return exitcode if 0 <= exitcode <= 255 else 1


def _failure_time(failure: Any, died_after: dict[int, float]) -> float:
    """When the rank failed: its error file's time (when it hit the error), else the last time
    ExitClock saw it alive (a lower bound of its death), else torch's whole-second time."""
    data = getattr(failure, "error_file_data", None) or {}
    t = data.get("cpt_time") if isinstance(data, dict) else None
    if isinstance(t, (int, float)):
        return float(t)
    if getattr(failure, "pid", None) in died_after:
        return died_after[failure.pid]
    return float(failure.timestamp)


def _is_consequence(failure: Any) -> bool:
    """Killed by, or stopped on, SIGTERM: what the agent sends the other ranks after the first
    failure (a SIGTERM to the launcher itself is not a rank failure: see run_launch)."""
    return failure.exitcode in (-signal.SIGTERM, 128 + signal.SIGTERM)


def root_failure(failures: dict[int, Any], died_after: dict[int, float] | None = None) -> tuple[int, Any]:
    """The root-cause (global rank, ProcessFailure): the first failure.

    Ranks the agent stopped with SIGTERM after the first failure come last; then the earliest
    time (`_failure_time`; `died_after` from ExitClock, pid -> last seen alive); a signal death,
    then the lowest rank, wins a tie.
    """
    times = died_after or {}

    def key(r: int) -> tuple[bool, float, int, int]:
        f = failures[r]
        return _is_consequence(f), _failure_time(f, times), 0 if f.exitcode < 0 else 1, r

    rank = min(failures, key=key)
    return rank, failures[rank]


class ExitClock:
    """The last time each child process of this one was seen alive, to ~10 ms, without reaping it.

    The agent notices failures only every monitor interval and stamps them in whole seconds, so
    a rank SIGKILLed (no error file) and its peer that crashed on the broken collective right
    after look simultaneous. This thread peeks at the children every 10 ms with waitid(WNOWAIT)
    (the agent's Popen.poll still reaps them); once one has exited (or was reaped), `died_after`
    holds the last tick it was alive: its death came after that, a peer's crash caused by it later still.
    """

    def __init__(self, interval_s: float = 0.01, rescan_s: float = 0.2):
        self.died_after: dict[int, float] = {}
        self._interval_s, self._rescan_s = interval_s, rescan_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpt-exit-clock", daemon=True)

    def __enter__(self) -> "ExitClock":
        if hasattr(os, "waitid") and hasattr(os, "WNOWAIT"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=1)

    @staticmethod
    def _children() -> set[int]:
        pids: set[int] = set()
        try:
            for task in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{task}/children", encoding="ascii") as fp:
                    pids.update(int(p) for p in fp.read().split())
        except (OSError, ValueError):
            try:
                import psutil

                pids.update(c.pid for c in psutil.Process().children())
            except Exception:
                pass
        return pids

    def _run(self) -> None:
        alive: dict[int, float] = {}  # pid -> last tick seen alive
        next_scan = 0.0
        while not self._stop.wait(self._interval_s):
            now = time.time()
            if time.monotonic() >= next_scan:
                for pid in self._children() - set(self.died_after) - set(alive):
                    alive[pid] = now
                next_scan = time.monotonic() + self._rescan_s
            for pid in list(alive):
                try:
                    exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:  # already reaped by the agent
                    exited = True
                if exited is None:
                    alive[pid] = now
                else:
                    self.died_after[pid] = alive.pop(pid)


def _failure_message(failure: Any) -> str:
    """The last line of the rank's error file ("" without one)."""
    if getattr(failure, "error_file", "<N/A>") in ("", "<N/A>"):
        return ""
    message = getattr(failure, "message", "")
    if isinstance(message, dict):
        message = message.get("message") or message.get("extraInfo", {}).get("py_callstack", "")
    lines = [line.strip() for line in str(message or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe_failure(rank: int, failure: Any) -> str:
    """One line: `cpt-trainer launch: rank R exited C: <message>` (or `killed by SIGNAL (exit 128+N)`)."""
    code = exit_code_of(failure.exitcode)
    message = _failure_message(failure)
    if failure.exitcode < 0:
        line = f"{PROG}: rank {rank} killed by {_signal_name(-failure.exitcode)} (exit {code})"
    else:
        line = f"{PROG}: rank {rank} exited {code}"
        message = message or "no error file (see the rank's output above)"
    return f"{line}: {message}" if message else line


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """`[launch options] -- SUBCOMMAND ARGS` -> (launch options, cpt-trainer arguments)."""
    if "--" not in argv:
        raise ValueError("usage: cpt-trainer launch [torchrun options] -- train --config FILE")
    cut = argv.index("--")
    rest = argv[cut + 1:]
    if not rest or rest[0].startswith("-"):
        raise ValueError("nothing to launch after `--` (expected e.g. `-- train --config FILE`)")
    return argv[:cut], rest


def _rank_command() -> list[str]:
    """Each rank runs `cpt-trainer SUBCOMMAND ...` with this interpreter (no PATH lookup)."""
    return [sys.executable, "-u", "-m", "cpt_trainer.cli"]


def _torchrun_args(options: list[str], rest: list[str]):
    """torchrun's own parser (its options and `PET_*` env defaults) and its pre-launch adjustments."""
    import uuid

    from torch.distributed import run as torchrun

    cmd = _rank_command()
    parser = torchrun.get_args_parser()
    parser.prog = PROG
    args = parser.parse_args([*options, "--no-python", cmd[0], *cmd[1:], *rest])
    # the same adjustments as torch.distributed.run.run()
    if args.standalone:
        args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    elif args.rdzv_backend == "static" and not args.rdzv_endpoint and args.master_port is None:
        _, max_nodes = torchrun.parse_min_max_nnodes(args.nnodes)
        if max_nodes == 1:
            args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())
    if args.master_port is None:
        args.master_port = 29500
    if args.shutdown_timeout is None and "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in os.environ:
        args.shutdown_timeout = DEFAULT_SHUTDOWN_TIMEOUT_S
    return torchrun, args


def run_launch(argv: list[str]) -> int:
    """Entry point of `cpt-trainer launch`; see the module docstring for exit codes."""
    if "--" not in argv and ("-h" in argv or "--help" in argv):
        print(__doc__.split("\n\n")[0] + "\nOptions: torchrun's (`torchrun --help`), e.g. --nnodes, --nproc-per-node, "
              "--node-rank, --master-addr, --master-port, --max-restarts (0), --shutdown-timeout "
              f"({DEFAULT_SHUTDOWN_TIMEOUT_S})")  # fmt: skip
        return 0
    try:
        options, rest = split_argv(argv)
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr, flush=True)
        return 2
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.api import _terminate_process_handler
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import launch_agent

    try:
        torchrun, args = _torchrun_args(options, rest)
    except SystemExit as exc:  # argparse already printed why
        return 2 if exc.code else 0
    try:
        config, cmd, cmd_args = torchrun.config_from_args(args)
    except (ValueError, AssertionError, RuntimeError) as exc:
        print(f"{PROG}: invalid launch options: {exc}", file=sys.stderr, flush=True)
        return 2
    # a SIGTERM before the agent installs its own handlers (same one) is a preemption too
    for name in config.signals_to_handle.split(","):
        sig = getattr(signal, name.strip(), None)
        if sig is not None:
            signal.signal(sig, _terminate_process_handler)
    clock = ExitClock()
    try:
        with clock:
            launch_agent(config, cmd, list(cmd_args))
    except ChildFailedError as exc:
        rank, failure = root_failure(exc.failures, clock.died_after)
        print(describe_failure(rank, failure), file=sys.stderr, flush=True)
        code = exit_code_of(failure.exitcode)
        return code if code != 0 else 1
    except SignalException as exc:
        signum = int(exc.sigval)
        print(
            f"{PROG}: got {_signal_name(signum)}: asked the ranks to save a checkpoint and stop "
            f"(waited up to {config.shutdown_timeout} s), exiting {128 + signum}",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        return 128 + signum
    except Exception as exc:  # rendezvous or agent failure: nothing ran, or not to the end
        code = launcher_failure_code(exc)
        kind = "rendezvous failed (transient)" if code == RENDEZVOUS_ERROR_EXIT else "launcher failed"
        print(f"{PROG}: {kind}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
              f" (exit {code})", file=sys.stderr, flush=True)  # fmt: skip
        return code
    return 0
