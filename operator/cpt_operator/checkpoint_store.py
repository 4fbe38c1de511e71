"""Deleting a run's checkpoints from storage: the interface the deletion handler calls.

The metrics/checkpoint issue implements rotation and real deletion (S3 through boto3
with the tenant's credentials, PVCs through the trainer's retain file); until then the
default store only reports that it deleted nothing, so no checkpoint is ever lost by
accident.
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from cpt_operator.api.common import StorageLocation

logger = logging.getLogger(__name__)


@runtime_checkable
class CheckpointStore(Protocol):
    """Storage of the checkpoints below <storage>/<namespace>/<run>/."""

    async def delete_run_checkpoints(self, namespace: str, run: str, storage: StorageLocation) -> int:
        """Delete every checkpoint of one run (its own prefix only); returns how many.

        Called only for policies with deleteWithRun, after the run's PyTorchJob is gone.
        Raise to have the deletion retried (bounded; the finalizer is released after the
        last retry so a namespace deletion is never blocked forever)."""
        ...


class NoopCheckpointStore:
    """Deletes nothing (placeholder until the checkpoint issue fills the store in)."""

    async def delete_run_checkpoints(self, namespace: str, run: str, storage: StorageLocation) -> int:
        logger.warning("checkpoint deletion for %s/%s is not implemented yet; nothing deleted", namespace, run)
        return 0
