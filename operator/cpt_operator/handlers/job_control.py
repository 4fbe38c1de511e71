"""Stop or start a run's PyTorchJob the way whoever admits it supports (decide/suspend.py).

Used by the run's reconcile (tenant spec.suspend) and by the control loop (forgetting
halt, resume), so every stop goes through one path and sticks under Kueue.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

from cpt_operator import kube
from cpt_operator.decide.suspend import JobControl, job_control, kueue_managed
from cpt_operator.render import names

# Marks a Workload this operator deactivated, so only those are reactivated on resume.
STOPPED_ANNOTATION = "cpt.dev/stopped-by-operator"


def job_queue_label(job: dict[str, Any]) -> str | None:
    return ((job.get("metadata") or {}).get("labels") or {}).get(names.KUEUE_QUEUE_LABEL) or None


def is_kueue_managed(job: dict[str, Any], settings: Any) -> bool:
    return kueue_managed(job_queue_label(job), settings.kueue.manage_jobs_without_queue_name)


async def workloads_resource(ctx: Any) -> kube.Resource | None:
    """Kueue's Workloads in the configured API version or, by default, the one the API server
    prefers: writing through an older served version drops the fields it lacks, and Kueue's
    own validation then refuses the write (e.g. v1beta1 on Kueue 0.17: "no such key:
    priorityClassSource"). None when Kueue is not installed."""
    version = ctx.settings.kueue.workload_api_version
    if version == "auto":
        if ctx.kueue_workload_version is None:
            group = await ctx.kube.api_group("kueue.x-k8s.io")
            if group is None:
                return None
            ctx.kueue_workload_version = group["preferredVersion"]["version"]
        version = ctx.kueue_workload_version
    return kube.Resource("kueue.x-k8s.io", version, "workloads")


async def job_workload(ctx: Any, namespace: str, job: dict[str, Any]) -> tuple[kube.Resource, dict[str, Any]] | None:
    """The Kueue Workload of `job` (labelled with the job's uid and controlled by it), with the
    resource it was read through."""
    uid = (job.get("metadata") or {}).get("uid")
    if not uid:
        return None
    res = await workloads_resource(ctx)
    if res is None:
        return None
    try:
        workloads = await ctx.kube.list(res, namespace, {names.KUEUE_JOB_UID_LABEL: uid})
    except kube.KubeError as exc:
        if exc.status == 404:  # Kueue (or this API version of it) is not installed: no Workload
            return None
        raise
    for wl in workloads:
        owners = (wl.get("metadata") or {}).get("ownerReferences") or []
        if any(o.get("uid") == uid and o.get("controller") for o in owners):
            return res, wl
    return None


async def control_job(ctx: Any, namespace: str, job: dict[str, Any], want_stopped: bool, logger: Any,
                      veto_start: Callable[[], Awaitable[bool]] | None = None) -> dict[str, Any] | None:  # fmt: skip
    """Make `job` stopped or running as wanted; returns the patched job when it changed.

    `veto_start` is asked before a write that would start the job; True cancels it."""
    suspend = bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend", False))
    managed = is_kueue_managed(job, ctx.settings)
    if managed and not want_stopped and not suspend:
        return None  # admitted and running, as wanted: no Workload to read (the hot path)
    found = await job_workload(ctx, namespace, job) if managed else None
    res, workload = found if found is not None else (None, None)
    active = None
    stopped_by_us = False
    if workload is not None:
        active = (workload.get("spec") or {}).get("active", True) is not False
        stopped_by_us = STOPPED_ANNOTATION in ((workload.get("metadata") or {}).get("annotations") or {})
    decision: JobControl = job_control(want_stopped, managed, suspend, active, stopped_by_us)
    name = job["metadata"]["name"]
    starts = decision.suspend is False or decision.workload_active is True
    if starts and veto_start is not None and await veto_start():
        return None
    if decision.workload_active is not None and workload is not None and res is not None:
        marker = "true" if not decision.workload_active else None
        await ctx.kube.patch(res, namespace, workload["metadata"]["name"], {
            "metadata": {"annotations": {STOPPED_ANNOTATION: marker}}, "spec": {"active": decision.workload_active},
        })  # fmt: skip
        logger.info("set active=%s on Kueue Workload %s/%s of PyTorchJob %s", decision.workload_active, namespace,
                    workload["metadata"]["name"], name)  # fmt: skip
    if decision.suspend is not None:
        patched = await ctx.kube.patch(kube.PYTORCHJOBS, namespace, name, {"spec": {"runPolicy": {"suspend": decision.suspend}}})
        logger.info("set suspend=%s on PyTorchJob %s/%s", decision.suspend, namespace, name)
        return patched
    return None
