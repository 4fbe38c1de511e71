"""A run's phase and job-derived conditions from its PyTorchJob's status (pure).

The training operator (kubeflow.org/v1) sets conditions of type Created, Running,
Restarting, Succeeded, Failed and Suspended; the newest True one wins, terminal ones
(Succeeded, Failed) win over all others.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

from cpt_operator import conditions as c
from cpt_operator.labels import ANNOTATION_CONFIG_DIGEST, ANNOTATION_SPEC_DIGEST, KUEUE_QUEUE_LABEL

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class JobView:
    """What the reconciler needs of a PyTorchJob (from the watch cache or a GET)."""

    name: str
    suspend: bool
    conditions: tuple[dict[str, Any], ...]
    spec_digest: str | None
    config_digest: str | None
    queue_name: str | None = None  # Kueue's queue label on the job, whoever set it

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "JobView":
        meta = body.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        return cls(
            name=str(meta.get("name", "")),
            suspend=bool((spec.get("runPolicy") or {}).get("suspend", False)),
            conditions=tuple(dict(x) for x in status.get("conditions") or [] if isinstance(x, dict)),
            spec_digest=annotations.get(ANNOTATION_SPEC_DIGEST),
            config_digest=annotations.get(ANNOTATION_CONFIG_DIGEST),
            queue_name=(meta.get("labels") or {}).get(KUEUE_QUEUE_LABEL) or None,
        )

    @property
    def finished(self) -> bool:
        """Succeeded or Failed: the training operator is done with it."""
        return true_condition(self.conditions, "Succeeded") is not None or true_condition(self.conditions, "Failed") is not None


@dataclass(frozen=True)
class RunJobState:
    """Phase plus the Running/Suspended/Succeeded/Failed conditions of a run with a job."""

    phase: str
    running: tuple[bool, str, str]
    suspended: tuple[bool, str, str]
    succeeded: tuple[bool, str, str]
    failed: tuple[bool, str, str]


def true_condition(conds: Iterable[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    """The job's True condition of `type_`, if any."""
    return next((x for x in conds if x.get("type") == type_ and x.get("status") == "True"), None)


def job_state(job: JobView, tenant_suspend: bool, queued: bool) -> RunJobState:
    """Phase and conditions of a run from its job; messages say what is happening.

    `queued`: Kueue admits the job (decide/suspend.kueue_managed of the job's own label)."""
    conds = job.conditions
    failed = true_condition(conds, "Failed")
    succeeded = true_condition(conds, "Succeeded")
    not_suspended = (False, c.NOT_SUSPENDED, "")
    not_finished = (False, c.NOT_FINISHED, "")
    if succeeded is not None:
        msg = succeeded.get("message") or f"PyTorchJob {job.name} succeeded"
        return RunJobState("Succeeded", (False, c.JOB_NOT_RUNNING, "finished"), not_suspended, (True, c.JOB_SUCCEEDED, msg), not_finished)
    if failed is not None:
        msg = failed.get("message") or f"PyTorchJob {job.name} failed"
        return RunJobState("Failed", (False, c.JOB_NOT_RUNNING, "failed"), not_suspended, not_finished, (True, c.JOB_FAILED, msg))
    if job.suspend or true_condition(conds, "Suspended") is not None:
        if tenant_suspend:
            suspended = (True, c.SUSPENDED_BY_TENANT, "spec.suspend is true; set it to false to resume from the newest checkpoint")
            phase = "Suspended"
        elif queued:
            where = f"in queue {job.queue_name!r}" if job.queue_name else "(Kueue manages jobs without a queue name)"
            suspended = (True, c.WAITING_FOR_ADMISSION, f"waiting for Kueue to admit the job {where}")
            phase = "Pending"
        else:
            suspended = (True, c.SUSPENDED_BY_TENANT, "the PyTorchJob is suspended")
            phase = "Suspended"
        return RunJobState(phase, (False, c.JOB_NOT_RUNNING, "suspended"), suspended, not_finished, not_finished)
    # Newest of Running / Restarting decides (both can be True in old training operators).
    active = [x for x in conds if x.get("type") in ("Running", "Restarting") and x.get("status") == "True"]
    if active:
        newest = max(active, key=lambda x: (str(x.get("lastTransitionTime") or x.get("lastUpdateTime") or ""), conds.index(x)))
        if newest.get("type") == "Restarting":
            msg = newest.get("message") or "pods are restarting"
            return RunJobState("Restarting", (False, c.JOB_RESTARTING, msg), not_suspended, not_finished, not_finished)
        msg = newest.get("message") or f"PyTorchJob {job.name} is running"
        return RunJobState("Running", (True, c.JOB_RUNNING, msg), not_suspended, not_finished, not_finished)
    return RunJobState("Starting", (False, c.JOB_NOT_RUNNING, "pods are being created"), not_suspended, not_finished, not_finished)
