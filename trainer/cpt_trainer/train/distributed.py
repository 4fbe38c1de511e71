"""The torchrun / PyTorchJob process environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...)."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0


def read_dist_env() -> DistEnv:
    return DistEnv(
        rank=int(os.environ.get("RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """Join the job's process group (NCCL on GPU, Gloo on CPU); nothing to do for one process."""
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


_KEPT: list[object] = []  # see leave()


def keep_until_exit(obj: object) -> None:
    """Hold `obj` (the DDP module, whose reducer owns a reference to the process group) until
    the process ends through `leave`, so its C++ destructor never runs while Python exits."""
    _KEPT.append(obj)


def multi_process() -> bool:
    """True in a rank of a process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def leave(code: int) -> int:
    """End a rank of a multi-process run with `code` without running torch's C++ teardown.

    Destroying the Gloo process group at exit is unsafe on torch 2.13: its destructor joins a
    worker thread that may be releasing a finished collective's tensors, which needs the GIL
    the destructor holds (a deadlock: the rank never exits and the pod hangs), and a group left
    to static destructors aborts the process ("terminate called without an active exception").
    Everything a rank writes is durable before this point (checkpoints are complete, the error
    file and termination message written), so the rank flushes its streams and leaves with
    os._exit. One process (tests calling `cli.main`, local mode) returns `code` as usual."""
    if not multi_process():
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any rank."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
