"""Deleting a run's checkpoints with it (CheckpointPolicy deleteWithRun), for real.

S3: `S3CheckpointStore.delete_run` with the tenant's credentials (or the operator's own identity
on a prefix the platform granted the namespace), confined to the run's own prefix's step folders;
a storage error is retried, a refused storage (handlers.stores) keeps the checkpoints. PVC: a
cleanup Job in the tenant's namespace mounts the claim and deletes the run's step folders
(`cpt_operator.cleanup`); the handler is called again until the Job has finished.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from cpt_operator import kube
from cpt_operator.checkpoint_store import CheckpointsKept, RunCheckpoints
from cpt_operator.control.storage import StorageError, StorageRefused
from cpt_operator.handlers.context import OperatorContext
from cpt_operator.handlers.stores import CredentialsMissing, s3_store_for
from cpt_operator.render import names
from cpt_operator.render.cleanup_job import render_cleanup_job

WAIT_SECONDS = 10.0


def job_outcome(job: dict[str, Any]) -> str | None:
    """"Complete", "Failed", or None while it runs (batch/v1 Job conditions)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Failed"):
            return str(cond["type"])
    return None


class ClusterCheckpointDeleter:
    def __init__(self, ctx: OperatorContext):
        self.ctx = ctx

    async def delete_run_checkpoints(self, target: RunCheckpoints) -> str:
        if target.storage.s3 is not None:
            return await self._delete_s3(target)
        return await self._delete_pvc(target)

    async def _delete_s3(self, target: RunCheckpoints) -> str:
        storage = target.storage
        try:
            store = await s3_store_for(self.ctx, target.namespace, target.run, storage, prefix=target.prefix)
        except CredentialsMissing as exc:
            raise CheckpointsKept(f"{exc}; the checkpoints below {storage.s3.uri} were kept") from None  # type: ignore[union-attr]
        try:
            deleted = await asyncio.to_thread(store.delete_run)
        except StorageRefused as exc:  # no credentials it may use, an endpoint not allowed: nothing was sent
            raise CheckpointsKept(f"{exc}; the checkpoints below {store.prefix}/ were kept") from None
        except StorageError as exc:
            raise kopf.TemporaryError(f"deleting the checkpoints failed, retrying: {exc}", delay=WAIT_SECONDS) from None
        return f"deleted {deleted} object(s) below {store.prefix}/"

    async def _delete_pvc(self, target: RunCheckpoints) -> str:
        namespace, storage = target.namespace, target.storage
        job_name = names.cleanup_job_name(target.run, target.uid)
        job = await self.ctx.kube.get(kube.JOBS, namespace, job_name)
        if job is None:
            body = render_cleanup_job(namespace, target.run, target.uid, target.prefix, storage, self.ctx.settings)
            try:
                created = await self.ctx.kube.create(kube.JOBS, namespace, body)
            except kube.Conflict:
                raise kopf.TemporaryError(f"cleanup Job {job_name} appeared meanwhile; checking it", delay=1) from None
            # Its uid, on the run (still there: our finalizer holds it): only this Job's outcome counts.
            record = {"status": {"cleanupJob": {"name": job_name, "uid": created["metadata"]["uid"]}}}
            await self.ctx.kube.patch_status(kube.CPTRUNS, namespace, target.run, record)
            raise kopf.TemporaryError(f"cleanup Job {job_name} created; waiting for it to delete the checkpoints", delay=WAIT_SECONDS)
        if not target.cleanup_job_uid or (job.get("metadata") or {}).get("uid") != target.cleanup_job_uid:
            # Not the Job this operator created for this run (a look-alike, or one whose record
            # did not land): its outcome says nothing about this run's checkpoints.
            raise CheckpointsKept(f"a Job named {job_name!r} exists that the operator did not create for this run; "
                                  "the checkpoints were kept (delete them, and that Job, by hand)")  # fmt: skip
        outcome = job_outcome(job)
        if outcome is None:
            raise kopf.TemporaryError(f"waiting for cleanup Job {job_name}", delay=WAIT_SECONDS)
        claim = storage.pvc.claim_name  # type: ignore[union-attr]
        if outcome == "Failed":
            raise CheckpointsKept(f"cleanup Job {job_name} failed; the checkpoints on PVC {claim!r} were kept (see its pod's log)")
        return f"cleanup Job {job_name} deleted the checkpoints on PVC {claim!r}"
