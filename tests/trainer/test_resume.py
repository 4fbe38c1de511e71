"""Kill a real trainer process with a real signal, restart it, compare with an uninterrupted run."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

TOTAL, INTERVAL = 40, 5


def _env(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CPT_CACHE_DIR=str(tmp_path / "cache"))
    return env


def _start(config, tmp_path, log):
    return subprocess.Popen([sys.executable, "-m", "cpt_trainer.cli", "train", "--config", str(config)],
                            env=_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)


def _config(make_config, tmp_path, name, ck):
    return make_config(
        name,
        data={"sequence_length": 128},
        batch={"micro_batch_size": 4, "global_batch_size": 16, "total_steps": TOTAL},
        eval={"interval": 10, "max_batches": 1},
        checkpoint={"interval": INTERVAL, "uri": str(ck)},
    )


def _weights(ck: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ck / f"step-{TOTAL:08d}" / "model" / "model.safetensors"))


@pytest.mark.slow
def test_killed_run_resumes_from_newest_complete_checkpoint_and_matches_uninterrupted(make_config, tmp_path):
    ck_a, ck_b = tmp_path / "ck-uninterrupted", tmp_path / "ck-killed"
    cfg_a = _config(make_config, tmp_path, "a.json", ck_a)
    cfg_b = _config(make_config, tmp_path, "b.json", ck_b)

    with open(tmp_path / "a.log", "wb") as log:
        assert _start(cfg_a, tmp_path, log).wait(timeout=300) == 0

    with open(tmp_path / "b1.log", "wb") as log:
        proc = _start(cfg_b, tmp_path, log)
        deadline = time.monotonic() + 240
        while not (ck_b / f"step-{INTERVAL:08d}" / "COMPLETE").exists():
            assert proc.poll() is None, "trainer exited before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL  # killed mid-run, not finished
    complete = sorted(p.name for p in ck_b.glob("step-*") if (p / "COMPLETE").exists())
    assert complete and complete[-1] != f"step-{TOTAL:08d}"
    newest = complete[-1]

    # A newer, half-written checkpoint (no COMPLETE marker, garbage inside) must be ignored.
    half = ck_b / f"step-{TOTAL - INTERVAL:08d}"
    shutil.rmtree(half, ignore_errors=True)
    (half / "model").mkdir(parents=True)
    (half / "model" / "model.safetensors").write_bytes(b"\0" * 100)
    (half / "trainer_state.json").write_text("{not json")

    with open(tmp_path / "b2.log", "wb") as log:
        assert _start(cfg_b, tmp_path, log).wait(timeout=300) == 0
    log_text = (tmp_path / "b2.log").read_text()
    assert f"resuming from checkpoint {newest}" in log_text
    assert f"ignoring incomplete checkpoint {half}" in log_text
    assert (half / "COMPLETE").exists()  # rewritten whole when the run reached that step

    a, b = _weights(ck_a), _weights(ck_b)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), name
    # Same data position and schedule at the end.
    for name in ("data_position.json", "scheduler.json"):
        assert (ck_a / f"step-{TOTAL:08d}" / name).read_text() == (ck_b / f"step-{TOTAL:08d}" / name).read_text()
