"""Running `cpt-trainer launch` (the PyTorchJob container's command) as a process on loopback, for
the tests that start real ranks: its environment, its command line, its ranks, and ending it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(cache: Path) -> dict[str, str]:
    """This process's environment for a launcher: one thread per rank (the machine is shared), its
    own cache folder, and none of the rank or PET_* variables a test runner may carry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CPT_CACHE_DIR=str(cache))
    return env


def launch_command(config: Path, nodes: int = 1, node_rank: int = 0, port: int | None = None,
                   options: tuple[str, ...] = ()) -> list[str]:
    """One node's `cpt-trainer launch ... -- train --config F`: 2 ranks on one node, or 1 rank per
    node with `nodes` 2 (static rendezvous on node 0's `port`)."""
    return [sys.executable, "-m", "cpt_trainer.cli", "launch", "--nnodes", str(nodes), "--nproc-per-node", str(2 // nodes),
            "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port or free_port()),
            "--max-restarts", "0", "--shutdown-timeout", "120", *options, "--", "train", "--config", str(config)]  # fmt: skip


def trainer_ranks(proc: subprocess.Popen) -> list[psutil.Process]:
    """The `train` ranks a launcher started (the agent gives them their own session)."""
    return [c for c in psutil.Process(proc.pid).children(recursive=True) if "train" in c.cmdline()]


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher that still runs and everything it started, and reap it."""
    if proc.poll() is not None:
        return
    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def complete_checkpoints(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("step-*") if (p / "COMPLETE").exists())
