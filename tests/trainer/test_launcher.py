"""`cpt-trainer launch`: two real ranks on CPU over gloo under torch's elastic agent, and the
launcher's exit code naming what happened (the PyTorchJob's `restartPolicy: ExitCode` retries
>= 128 and fails 1-127 at once): a config error -> 2, a rank SIGKILLed -> 137, the launcher
SIGTERMed (preemption) -> 143 after the ranks saved a checkpoint. The root error is the last
line on stderr."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from cpt_trainer.train.launcher import ExitClock, describe_failure, exit_code_of, root_failure, split_argv

TOTAL, INTERVAL = 400, 4
DEADLINE_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: Path, tmp_path: Path, name: str) -> tuple[subprocess.Popen, Path, Path]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CPT_CACHE_DIR=str(tmp_path / "cache"))
    for key in [k for k in env if k.startswith("PET_") or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")]:
        del env[key]
    cmd = [sys.executable, "-m", "cpt_trainer.cli", "launch", "--nnodes", "1", "--nproc-per-node", "2",
           "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "--max-restarts", "0", "--shutdown-timeout", "120", "--", "train", "--config", str(config)]  # fmt: skip
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(cmd, env=env, stdout=o, stderr=e)
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


def _complete(ck: Path) -> list[str]:
    return sorted(p.name for p in ck.glob("step-*") if (p / "COMPLETE").exists())


def _wait_for_checkpoint(proc: subprocess.Popen, ck: Path, out: Path, err: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not _complete(ck):
        assert proc.poll() is None, _logs(out, err)
        assert time.monotonic() < deadline, "no first checkpoint: " + _logs(out, err)
        time.sleep(0.05)


def _ranks(proc: subprocess.Popen) -> list[psutil.Process]:
    return [c for c in psutil.Process(proc.pid).children(recursive=True) if "train" in c.cmdline()]


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
        _wait_for_checkpoint(proc, ck, out, err)
        ranks = _ranks(proc)
        assert len(ranks) == 2, [c.cmdline() for c in ranks]
        victim = next(r for r in ranks if "RANK" in r.environ() and r.environ()["RANK"] == "1")
        victim.send_signal(signal.SIGKILL)  # e.g. the kernel's OOM killer: retryable
        assert proc.wait(timeout=DEADLINE_S) == 128 + signal.SIGKILL, _logs(out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
    last = _last_stderr_line(err)
    assert last == "cpt-trainer launch: rank 1 killed by SIGKILL (exit 137)", _logs(out, err)
    psutil.wait_procs(ranks, timeout=120)


@pytest.mark.slow
def test_a_sigtermed_launcher_lets_the_ranks_checkpoint_and_exits_143(make_config, tmp_path):
    ck = tmp_path / "ck"
    proc, out, err = _launch(_config(make_config, ck), tmp_path, "sigterm")
    try:
        _wait_for_checkpoint(proc, ck, out, err)
        ranks = _ranks(proc)
        assert len(ranks) == 2, [c.cmdline() for c in ranks]
        proc.send_signal(signal.SIGTERM)  # preemption: the kubelet signals the container's PID 1
        assert proc.wait(timeout=DEADLINE_S) == 128 + signal.SIGTERM, _logs(out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
    gone, alive = psutil.wait_procs(ranks, timeout=120)
    assert not alive
    logs = _logs(out, err)
    assert "stopped at step" in logs and "Unable to shutdown process" not in logs, logs  # saved, not SIGKILLed
    last = _last_stderr_line(err)
    assert last.startswith("cpt-trainer launch: got SIGTERM"), logs
    complete = _complete(ck)
    assert complete and complete[-1] != f"step-{TOTAL:08d}", complete
    stopped = int(re.search(r"stopped at step (\d+) on request", logs).group(1))
    assert complete[-1] == f"step-{stopped:08d}", (complete, stopped)  # the stop's own checkpoint
    state = json.loads((ck / complete[-1] / "trainer_state.json").read_text())
    assert state["step"] == int(complete[-1].split("-")[1])


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
        _wait_for_checkpoint(proc, ck, out, err)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 128 + signal.SIGTERM, _logs(out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = _complete(ck)[-1]
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
    failures = {0: _failure(1, cpt_time=100.6, message="RuntimeError: Connection closed by peer"), 1: _failure(-9)}
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


def test_launch_needs_a_subcommand_after_the_separator():
    assert split_argv(["--nproc-per-node", "2", "--", "train", "--config", "c.json"]) == (
        ["--nproc-per-node", "2"], ["train", "--config", "c.json"])
    for argv in (["train", "--config", "c.json"], ["--nproc-per-node", "2", "--"]):
        with pytest.raises(ValueError):
            split_argv(argv)
