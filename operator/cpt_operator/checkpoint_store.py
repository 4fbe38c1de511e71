"""The deletion handler's seam: delete every checkpoint of one run (deleteWithRun).

The deployed operator uses `handlers.deletion.ClusterCheckpointDeleter` (S3 through boto3
with the tenant's own credentials and `control.storage.S3CheckpointStore.delete_run`; PVCs
through a cleanup Job in the tenant's namespace). Tests inject a recording one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cpt_operator.api.common import StorageLocation


@dataclass(frozen=True)
class RunCheckpoints:
    """One deleted run's checkpoints: its prefix as recorded when its job was created
    (`<storage>/<namespace>/<run>[/<uid>]`, see decide/run.decide_checkpoint_deletion)."""

    namespace: str
    run: str
    uid: str
    prefix: str
    storage: StorageLocation
    cleanup_job_uid: str | None = None  # status.cleanupJob.uid: the cleanup Job the operator created


class CheckpointsKept(Exception):
    """Deletion will not happen (a Secret without its keys, a failed cleanup Job): the
    checkpoints stay, the tenant is told why, and the run's deletion is not blocked."""


@runtime_checkable
class RunCheckpointsDeleter(Protocol):
    async def delete_run_checkpoints(self, target: RunCheckpoints) -> str:
        """Delete every checkpoint below `target.prefix` and say what was done.

        Called only for policies with deleteWithRun, after the run's PyTorchJob is gone.
        Raise kopf.TemporaryError to be called again (bounded: the finalizer is released
        after the last retry, so a namespace deletion is never blocked forever), or
        CheckpointsKept when retrying cannot help."""
        ...
