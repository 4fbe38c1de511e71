"""runPolicy.suspend of a run's PyTorchJob, combining the tenant's suspend with Kueue (pure).

With a Kueue queue the job is created suspended and Kueue un-suspends it on admission;
the operator then never writes `suspend: false` itself (that would bypass the queue, or
fight Kueue when it preempts). Without a queue the operator mirrors spec.suspend.
"""

from __future__ import annotations


def initial_suspend(tenant_suspend: bool, queue_name: str | None, halted: bool = False) -> bool:
    """runPolicy.suspend of a new PyTorchJob: suspended by the tenant, by a halt, or until Kueue admits it."""
    return tenant_suspend or halted or bool(queue_name)


def suspend_patch(tenant_suspend: bool, queue_name: str | None, job_suspend: bool, halted: bool = False) -> bool | None:
    """The runPolicy.suspend to write to an existing job, or None to leave it as it is.

    - tenant (or a forgetting halt) wants it stopped and it runs: True;
    - no queue, tenant wants it running and it is suspended: False;
    - with a queue: never False; Kueue's admission un-suspends, and a resumed run is
      handed back to Kueue still suspended.
    """
    want_stopped = tenant_suspend or halted
    if want_stopped:
        return True if not job_suspend else None
    if queue_name:
        return None
    return False if job_suspend else None
