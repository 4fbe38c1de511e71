"""How a run's PyTorchJob is stopped and started, with and without Kueue (pure).

Without Kueue the operator owns `runPolicy.suspend`: it mirrors the tenant's spec.suspend
and the forgetting monitor's halt.

With Kueue managing the job, Kueue owns `runPolicy.suspend`: its job reconciler
un-suspends any suspended job whose Workload is admitted, so writing `suspend: true` on an
admitted job only starts a fight and never releases quota. Kueue's supported stop is the
Workload's `spec.active: false` (Kueue evicts it, suspends the job, releases the quota);
`spec.active: true` hands it back to the queue. The operator never writes `suspend: false`
on such a job.

A job is Kueue-managed when it carries Kueue's queue label, whoever set it: the operator
(spec.resources.queueName), or Kueue's webhook (a namespace LocalQueue named `default`);
or when the platform runs Kueue with `manageJobsWithoutQueueName` (operator settings).
"""

from __future__ import annotations

from dataclasses import dataclass


def initial_suspend(tenant_suspend: bool, queue_name: str | None, halted: bool = False) -> bool:
    """runPolicy.suspend of a new PyTorchJob: suspended by the tenant, by a halt, or until Kueue admits it."""
    return tenant_suspend or halted or bool(queue_name)


def kueue_managed(job_queue_label: str | None, manage_jobs_without_queue_name: bool) -> bool:
    """Whether Kueue admits (and so owns runPolicy.suspend of) a job with this queue label."""
    return bool(job_queue_label) or manage_jobs_without_queue_name


@dataclass(frozen=True)
class JobControl:
    """What to write so a job is stopped or running as wanted; None: leave it as it is."""

    suspend: bool | None = None  # runPolicy.suspend (jobs Kueue does not manage)
    workload_active: bool | None = None  # the Workload's spec.active (Kueue-managed jobs)


def job_control(want_stopped: bool, managed: bool, job_suspend: bool, workload_active: bool | None,
                stopped_by_us: bool) -> JobControl:  # fmt: skip
    """The writes that make the job stopped (tenant suspend or halt) or running.

    `workload_active` is the Workload's spec.active, None when Kueue has not created it yet;
    `stopped_by_us` says the operator deactivated it (an annotation on the Workload): a
    Workload Kueue deactivated itself (e.g. its requeuing limit) is never reactivated here.
    """
    if not managed:
        if want_stopped:
            return JobControl(suspend=True) if not job_suspend else JobControl()
        return JobControl(suspend=False) if job_suspend else JobControl()
    if workload_active is None:
        # No Workload yet: Kueue keeps an unadmitted job suspended itself. A running job with
        # no Workload is one Kueue is about to suspend; suspending it too is the same act.
        return JobControl(suspend=True) if want_stopped and not job_suspend else JobControl()
    if want_stopped:
        return JobControl(workload_active=False) if workload_active else JobControl()
    if not workload_active and stopped_by_us:
        return JobControl(workload_active=True)
    return JobControl()
