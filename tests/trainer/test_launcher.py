"""`cpt-trainer launch`: two real ranks on CPU over gloo under torch's elastic agent, and the
launcher's exit code naming what happened (the PyTorchJob's `restartPolicy: ExitCode` retries
>= 128 and fails 1-127 at once): a config error -> 2, a rank SIGKILLed -> 137, the launcher
SIGTERMed (preemption) -> 143 after the ranks saved a checkpoint, the surviving node of a lost
node -> 200 (its rank's communication error), a rendezvous that never completes -> 201. The root
error is the last line on stderr."""

import json
import re
import signal
import sys
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from launching import complete_checkpoints, free_port, kill_tree, launch_command, launch_env, trainer_ranks

from cpt_trainer.train.launcher import (
    COMM_ERROR_EXIT,
    RENDEZVOUS_ERROR_EXIT,
    ExitClock,
    describe_failure,
    exit_code_of,
    is_communication_error,
    launcher_failure_code,
    root_failure,
    split_argv,
)

TOTAL, INTERVAL = 400, 4
DEADLINE_S = 400


def _launch(config: Path, tmp_path: Path, name: str, nodes: int = 1, node_rank: int = 0, port: int | None = None,
            options: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path, Path]:
    """One node's `cpt-trainer launch` (launching.launch_command), its stdout and stderr in files."""
    cmd = launch_command(config, nodes, node_rank, port, options)
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, env=launch_env(tmp_path / f"cache-{node_rank}"), stdout=o, stderr=e)
    return proc, out, err


def _logs(out: Path, err: Path) -> str:
    return (out.read_text(errors="replace") + err.read_text(errors="replace"))[-4000:]


def _last_stderr_line(err: Path) -> str:
    lines = [line for line in err.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _config(make_config, ck: Path, name: str = "launch.json", total: int = TOTAL, **extra) -> Path:
    return make_config(
        name,
        batch={"micro_batch_size": 2, "global_batch_size": 8, "total_steps": total},
        engine={"kind": "torch", "device": "cpu", "compile": False, "precision": "fp32"},
        eval={"interval": 1000, "max_batches": 1},
        checkpoint={"interval": INTERVAL, "uri": str(ck)},
        **extra,
    )


def _wait_for_checkpoint(ck: Path, out: Path, err: Path, *procs: subprocess.Popen) -> None:
    """Until `ck` holds a complete checkpoint, with every launcher of `procs` still running."""
    deadline = time.monotonic() + DEADLINE_S
    while not complete_checkpoints(ck):
        assert all(p.poll() is None for p in procs), _logs(out, err)
        assert time.monotonic() < deadline, "no first checkpoint: " + _logs(out, err)
        time.sleep(0.05)


def test_a_config_error_exits_2_and_names_the_rank_last(make_config, tmp_path):
    config = _config(make_config, tmp_path / "ck", identity={"namespace": "tenant-a", "name": "run-1", "bogus": 1})
    proc, out, err = _launch(config, tmp_path, "config-error")
    assert proc.wait(timeout=DEADLINE_S) == 2, _logs(out, err)
    last = _last_stderr_line(err)
    assert last.startswith("cpt-trainer launch: rank ") and " exited 2: " in last, _logs(out, err)
    assert "invalid TrainerConfig" in last and "bogus" in last, last


@pytest.mark.slow
def test_a_rank_killed_by_a_signal_exits_128_plus_the_signal(make_config, tmp_path):
    ck = tmp_path / "ck"
    proc, out, err = _launch(_config(make_config, ck), tmp_path, "sigkill")
    try:
        _wait_for_checkpoint(ck, out, err, proc)
        ranks = trainer_ranks(proc)
        assert len(ranks) == 2, [c.cmdline() for c in ranks]
        victim = next(r for r in ranks if "RANK" in r.environ() and r.environ()["RANK"] == "1")
        victim.send_signal(signal.SIGKILL)  # e.g. the kernel's OOM killer: retryable
        assert proc.wait(timeout=DEADLINE_S) == 128 + signal.SIGKILL, _logs(out, err)
    finally:
        kill_tree(proc)
    last = _last_stderr_line(err)
    assert last == "cpt-trainer launch: rank 1 killed by SIGKILL (exit 137)", _logs(out, err)
    psutil.wait_procs(ranks, timeout=120)


@pytest.mark.slow
def test_a_sigtermed_launcher_lets_the_ranks_checkpoint_and_exits_143(make_config, tmp_path):
    ck = tmp_path / "ck"
    proc, out, err = _launch(_config(make_config, ck), tmp_path, "sigterm")
    try:
        _wait_for_checkpoint(ck, out, err, proc)
        ranks = trainer_ranks(proc)
        assert len(ranks) == 2, [c.cmdline() for c in ranks]
        proc.send_signal(signal.SIGTERM)  # preemption: the kubelet signals the container's PID 1
        assert proc.wait(timeout=DEADLINE_S) == 128 + signal.SIGTERM, _logs(out, err)
    finally:
        kill_tree(proc)
    gone, alive = psutil.wait_procs(ranks, timeout=120)
    assert not alive
    logs = _logs(out, err)
    assert "stopped at step" in logs and "Unable to shutdown process" not in logs, logs  # saved, not SIGKILLed
    last = _last_stderr_line(err)
    assert last.startswith("cpt-trainer launch: got SIGTERM"), logs
    complete = complete_checkpoints(ck)
    assert complete and complete[-1] != f"step-{TOTAL:08d}", complete
    stopped = int(re.search(r"stopped at step (\d+) on request", logs).group(1))
    assert complete[-1] == f"step-{stopped:08d}", (complete, stopped)  # the stop's own checkpoint
    state = json.loads((ck / complete[-1] / "trainer_state.json").read_text())
    assert state["step"] == int(complete[-1].split("-")[1])


def test_the_surviving_node_of_a_lost_node_exits_200_to_be_retried(make_config, tmp_path):
    """Two nodes of one rank each (two launchers, static rendezvous on node 0); node 1 is lost with
    all its processes mid-run: node 0's rank fails on the broken collective (gloo: "Connection
    closed by peer" or "reset by peer", by timing), exits 200 with that line in its error file,
    and its launcher exits 200."""
    port = free_port()
    # per-node checkpoint folders: node-local disks (each node's local rank 0 prepares its folder)
    node0 = _config(make_config, tmp_path / "ck-0", "node-0.json")
    node1 = _config(make_config, tmp_path / "ck-1", "node-1.json")
    a, out, err = _launch(node0, tmp_path, "node-0", nodes=2, node_rank=0, port=port)
    b, _, _ = _launch(node1, tmp_path, "node-1", nodes=2, node_rank=1, port=port)
    try:
        _wait_for_checkpoint(tmp_path / "ck-0", out, err, a, b)  # training runs on both nodes
        node = [psutil.Process(b.pid), *psutil.Process(b.pid).children(recursive=True)]  # the agent gives ranks their own session
        for proc in node:  # node 1 is gone: its launcher and its rank at once
            proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(node, timeout=60)
        assert a.wait(timeout=DEADLINE_S) == COMM_ERROR_EXIT, _logs(out, err)
    finally:
        kill_tree(a)
        kill_tree(b)
    last = _last_stderr_line(err)
    assert last.startswith("cpt-trainer launch: rank 0 exited 200: cpt-trainer train: communication error"), _logs(out, err)
    assert re.search(r"gloo/transport/tcp/.*Connection (closed|reset) by peer", last), last  # either, by timing


def test_a_rendezvous_that_never_completes_exits_201_to_be_retried(make_config, tmp_path):
    # node 1 of 2, and no node 0 (its pod not started yet, or gone): the store connection times out
    proc, out, err = _launch(_config(make_config, tmp_path / "ck"), tmp_path, "rendezvous", nodes=2, node_rank=1,
                             options=("--rdzv-conf", "timeout=3"))
    assert proc.wait(timeout=DEADLINE_S) == RENDEZVOUS_ERROR_EXIT, _logs(out, err)
    last = _last_stderr_line(err)
    assert last.startswith("cpt-trainer launch: rendezvous failed (transient): DistNetworkError:"), last
    assert last.endswith("(exit 201)"), last


def test_a_sigterm_stop_resumes_to_the_weights_of_an_uninterrupted_run(make_config, tmp_path):
    """Preemption end to end: SIGTERM mid-run, the ranks save at the current step and exit 143; the
    next attempt resumes there (same data position) and ends with an uninterrupted run's weights."""
    import torch
    from safetensors.torch import load_file

    total = 120
    ref, ck = tmp_path / "ck-ref", tmp_path / "ck"
    proc, out, err = _launch(_config(make_config, ref, "ref.json", total), tmp_path, "ref")
    assert proc.wait(timeout=DEADLINE_S) == 0, _logs(out, err)
    config = _config(make_config, ck, "stopped.json", total)
    proc, out, err = _launch(config, tmp_path, "stopped")
    try:
        _wait_for_checkpoint(ck, out, err, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 128 + signal.SIGTERM, _logs(out, err)
    finally:
        kill_tree(proc)
    stopped = complete_checkpoints(ck)[-1]
    assert stopped != f"step-{total:08d}", "the run ended before the SIGTERM: nothing was interrupted"
    proc, out, err = _launch(config, tmp_path, "resumed")
    assert proc.wait(timeout=DEADLINE_S) == 0, _logs(out, err)
    assert f"resuming from checkpoint {stopped}" in (out.read_text(errors="replace") + err.read_text(errors="replace"))
    a = load_file(str(ref / f"step-{total:08d}" / "model" / "model.safetensors"))
    b = load_file(str(ck / f"step-{total:08d}" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # same data, RNG and rank layout; gloo sums in a fixed order: float rounding only
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-5), key


# ------------------------------------------------------------------ the mapping, without processes


def _failure(exitcode: int, cpt_time: float | None = None, timestamp: int = 100, message: str = "") -> SimpleNamespace:
    data = {"cpt_time": cpt_time} if cpt_time is not None else {"message": "<NONE>"}
    return SimpleNamespace(exitcode=exitcode, error_file_data=data, timestamp=timestamp,
                           error_file="/tmp/error.json" if message else "<N/A>", message=message)  # fmt: skip


def test_exit_codes_of_ranks():
    assert exit_code_of(2) == 2 and exit_code_of(1) == 1 and exit_code_of(143) == 143
    assert exit_code_of(-signal.SIGKILL) == 137 and exit_code_of(-signal.SIGSEGV) == 139


def test_the_root_cause_is_the_first_failure_a_signal_winning_a_tie():
    # rank 1 was SIGKILLed (no error file: the agent's whole-second time); rank 0 then crashed
    # on the broken collective within the same second: rank 1 is the root cause.
    failures = {0: _failure(COMM_ERROR_EXIT, cpt_time=100.6, message="cpt-trainer train: communication error (...)"),
                1: _failure(-9)}  # fmt: skip
    assert root_failure(failures)[0] == 1
    assert describe_failure(1, failures[1]) == "cpt-trainer launch: rank 1 killed by SIGKILL (exit 137)"
    # a config error written earlier than another rank's failure wins
    failures = {0: _failure(-9, timestamp=101), 1: _failure(2, cpt_time=100.2, message="cpt-trainer train: bad")}
    assert root_failure(failures)[0] == 1
    assert describe_failure(1, failures[1]) == "cpt-trainer launch: rank 1 exited 2: cpt-trainer train: bad"


def test_the_exit_clock_orders_deaths_finer_than_the_agent_without_reaping():
    with ExitClock() as clock:
        late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.0)"])
        early = subprocess.Popen([sys.executable, "-c", "import os, signal, time; time.sleep(0.3); os.kill(os.getpid(), 9)"])
        deadline = time.monotonic() + 60
        while len({early.pid, late.pid} & set(clock.died_after)) < 2:
            assert time.monotonic() < deadline, clock.died_after
            time.sleep(0.01)
        # not reaped: the owner's Popen still gets the real status
        assert early.wait(timeout=10) == -signal.SIGKILL and late.wait(timeout=10) == 0
    assert clock.died_after[early.pid] < clock.died_after[late.pid]
    # the agent saw both in one poll, in whole seconds; the one that failed later has an error file
    failures = {0: SimpleNamespace(**vars(_failure(1, timestamp=5)), pid=late.pid),
                1: SimpleNamespace(**vars(_failure(-9, timestamp=5)), pid=early.pid)}
    failures[0].exitcode = 1
    assert root_failure(failures, clock.died_after)[0] == 1
    failures[1].exitcode = 3  # exit codes do not matter, times do
    assert root_failure(failures, clock.died_after)[0] == 1


def test_ranks_the_agent_sigtermed_after_the_first_failure_are_not_the_root_cause():
    # rank 1 hit the config error first but was still exiting when the agent, seeing rank 0's
    # exit 2, SIGTERMed it: rank 0's code is the one to report
    failures = {0: _failure(2, cpt_time=10.5, message="cpt-trainer train: bad"),
                1: _failure(-signal.SIGTERM, cpt_time=10.2, message="cpt-trainer train: bad")}  # fmt: skip
    assert root_failure(failures)[0] == 0
    failures = {0: _failure(143, cpt_time=10.5, message="stopped on SIGTERM"), 1: _failure(-9, timestamp=11)}
    assert root_failure(failures)[0] == 1
    failures = {0: _failure(143, cpt_time=10.5, message="stopped on SIGTERM")}  # a peer node was preempted
    assert exit_code_of(root_failure(failures)[1].exitcode) == 143


GLOO_PEER_LOST = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                  "peer [127.0.0.1]:52906. This is typically caused by a remote worker crashing.")  # torch 2.13


def test_communication_errors_are_transient_and_an_out_of_memory_error_is_not():
    import torch
    import torch.distributed as dist

    for exc in (dist.DistBackendError("NCCL communicator was aborted"), dist.DistNetworkError("socket timed out"),
                dist.DistStoreError("Timed out after 901 seconds waiting for clients"), RuntimeError(GLOO_PEER_LOST),
                RuntimeError("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, ...)"),
                RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1, remote process exited or there was a network error")):
        assert is_communication_error(exc), exc
    try:  # wrapped by a library: the chain counts
        try:
            raise RuntimeError(GLOO_PEER_LOST)
        except RuntimeError as inner:
            raise ValueError("DeepSpeed step failed") from inner
    except ValueError as wrapped:
        assert is_communication_error(wrapped)
    for exc in (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), RuntimeError("shape mismatch"),
                ValueError("Connection closed by peer"), KeyError("step")):
        assert not is_communication_error(exc), exc


def test_a_rank_error_file_with_the_communication_code_is_reported_and_retried():
    line = f"cpt-trainer train: communication error (a peer rank or node lost, or a collective timed out; transient, exit 200): RuntimeError: {GLOO_PEER_LOST}"
    failures = {0: _failure(COMM_ERROR_EXIT, cpt_time=100.6, message=line), 1: _failure(-signal.SIGTERM, timestamp=101)}
    rank, failure = root_failure(failures)
    assert rank == 0 and exit_code_of(failure.exitcode) == 200 >= 128
    assert describe_failure(rank, failure) == f"cpt-trainer launch: rank 0 exited 200: {line}"


def test_a_communication_error_in_a_rank_exits_200_with_its_error_file(monkeypatch, tmp_path, capsys):
    import torch.distributed as dist

    from cpt_trainer import cli
    from cpt_trainer.train import main

    def lost_peer(_config):
        raise RuntimeError(GLOO_PEER_LOST)

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setattr(main, "run_train", lost_peer)
    assert cli.main(["train", "--config", "unused.json"]) == COMM_ERROR_EXIT
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("cpt-trainer train: communication error") and "Connection closed by peer" in last, last
    data = json.loads(error_file.read_text())
    assert data["message"]["message"] == last and "Traceback" in data["message"]["extraInfo"]["py_callstack"]

    def store_gone(_config):
        raise dist.DistStoreError("failed to recv, got 0 bytes")

    error_file.unlink()
    monkeypatch.setattr(main, "run_train", store_gone)
    assert cli.main(["train", "--config", "unused.json"]) == COMM_ERROR_EXIT

    def oom(_config):  # not caught by run_train here: it stays a crash (exit 1 by the interpreter)
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(main, "run_train", oom)
    with pytest.raises(Exception, match="CUDA out of memory"):
        cli.main(["train", "--config", "unused.json"])


def test_the_launchers_own_rendezvous_failures_are_transient_and_its_bugs_are_not():
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import RendezvousClosedError, RendezvousTimeoutError

    for exc in (RendezvousTimeoutError("timed out"), RendezvousClosedError(), TimeoutError(),
                ConnectionRefusedError(), dist.DistNetworkError("The client socket has timed out")):
        assert launcher_failure_code(exc) == RENDEZVOUS_ERROR_EXIT == 201, exc
    assert launcher_failure_code(KeyError("local_rank")) == 1
    assert launcher_failure_code(ValueError("bad")) == 1
    assert 128 + max(signal.valid_signals()) < COMM_ERROR_EXIT < RENDEZVOUS_ERROR_EXIT <= 255


def test_launch_needs_a_subcommand_after_the_separator():
    assert split_argv(["--nproc-per-node", "2", "--", "train", "--config", "c.json"]) == (
        ["--nproc-per-node", "2"], ["train", "--config", "c.json"])
    for argv in (["train", "--config", "c.json"], ["--nproc-per-node", "2", "--"]):
        with pytest.raises(ValueError):
            split_argv(argv)
