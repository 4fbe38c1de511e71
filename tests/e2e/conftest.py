"""Local mode end to end: the shipped demo manifests, scaled down, run by the real CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

# The shipped demos, smaller: fewer pretraining and CPT tokens (same models and settings otherwise).
PRETRAIN_TOKENS = 409_600
RUN_TOKENS = 245_760


def scaled_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    boot = dst / "bootstrap" / "base-model.yaml"
    cfg = yaml.safe_load(boot.read_text())
    cfg["pretrain"]["totalTokens"] = PRETRAIN_TOKENS
    boot.write_text(yaml.safe_dump(cfg))
    run_file = dst / "03-cptrun.yaml"
    run = yaml.safe_load(run_file.read_text())
    run["spec"]["training"]["totalTokens"] = RUN_TOKENS
    run_file.write_text(yaml.safe_dump(run))
    return dst


def run_local(directory: Path, workdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cpt_operator.cli", "run-local", str(directory), "--workdir", str(workdir), "--poll", "0.5"],
        capture_output=True, text=True, timeout=900, cwd=REPO,
    )  # fmt: skip


@pytest.fixture(scope="session")
def local_runs(tmp_path_factory):
    """Both demos in one work folder (the base model is built once and shared)."""
    root = tmp_path_factory.mktemp("local")
    workdir = root / "work"
    default = run_local(scaled_copy(REPO / "examples" / "local", root / "default"), workdir)
    assert default.returncode == 0, default.stdout[-3000:] + default.stderr[-3000:]
    aggressive = run_local(scaled_copy(REPO / "examples" / "local-forgetting", root / "aggressive"), workdir)
    assert aggressive.returncode == 0, aggressive.stdout[-3000:] + aggressive.stderr[-3000:]
    return {
        "workdir": workdir,
        "default": workdir / "runs" / "default" / "legal-cpt",
        "aggressive": workdir / "runs" / "default" / "legal-cpt-aggressive",
        "stdout": default.stdout + aggressive.stdout,
    }
