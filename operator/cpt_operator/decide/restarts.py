"""Capping a run's restarts (pure): the training operator's backoffLimit does not, under ExitCode.

With `restartPolicy: ExitCode` the training operator v1.8.1 deletes a pod that exited 128 or
more and creates it anew (`ReconcilePods`, pkg/controller.v1/common/pod.go). Its two backoff
checks (`ReconcileJobs`, pkg/controller.v1/common/job.go) never fire for such a job with a
`runPolicy.backoffLimit` of 1 or more: `PastBackoffLimit` (pkg/core/job.go) sums the container
restartCount of Running pods, 0 for pods that run with restartPolicy Never and are recreated
rather than restarted in place; `exceedsBackoffLimit` compares the limit with the work queue's
requeue count, which the PyTorchJob controller's `FakeWorkQueue` always reports as 0 (so only a
limit of 0 fails the job, at its first failed pod). A pod killed at every start (137, an OOM
kill) would be retried forever, holding its GPUs. So the operator counts the restarts itself.

What is counted: each new `Restarting` condition of the PyTorchJob. The training operator sets it
True on every such recreation, and removes it when the job runs again (the Running condition
replaces it), so each restart after a running spell is a new condition with its own
lastTransitionTime; the newest one counted is recorded (`status.restarts.lastRestartTime`) and
a repeated reconcile never counts it twice. Under-counting is possible and is the safe
direction: restarts while the operator was down count as one, a pod that fails again before it
ever ran keeps the same condition, and two restarts within one second (the condition's time
has whole seconds) count once.

A run that makes progress between failures is not a crash loop: when its newest recorded
checkpoint (`status.checkpoints`) is past the one it had when the count started
(`sinceCheckpointStep`), the count starts again from 0. Over the limit (the operator's
`backoffLimit`, the value rendered into `runPolicy.backoffLimit`), the run fails:
decide/run.py stops the job the way a halt does and keeps it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from cpt_operator import conditions as c
from cpt_operator.decide.run_phase import true_condition
from cpt_operator.render.pytorchjob import CONTAINER_NAME


@dataclass(frozen=True)
class RestartCount:
    """The run's restart record and whether it is over the limit."""

    record: dict[str, Any] | None  # status.restarts as it should be; None: no restart seen, nothing to write
    count: int
    limit: int
    cause: str  # the training operator's message of the newest Restarting condition
    new: bool  # a restart counted now

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit


def newest_checkpoint_step(status: dict[str, Any]) -> int:
    """The newest step in status.checkpoints (deleted ones included: they were written); 0 when none."""
    steps = [int(r["step"]) for r in status.get("checkpoints") or [] if isinstance(r, dict) and isinstance(r.get("step"), int)]
    return max(steps, default=0)


def count_restarts(recorded: Any, job_conditions: Iterable[dict[str, Any]], newest_step: int, limit: int) -> RestartCount:
    """The restart record after this look at the job: `recorded` is status.restarts (or None),
    `newest_step` the run's newest checkpoint step (`newest_checkpoint_step`), `limit` the
    operator's backoffLimit (restarts allowed; one more fails the run)."""
    rec = recorded if isinstance(recorded, dict) else {}
    count = int(rec.get("count") or 0)
    last = rec.get("lastRestartTime")
    since = int(rec.get("sinceCheckpointStep") or 0)
    if newest_step > since:  # a new checkpoint since the count started: not a crash loop
        count, since = 0, newest_step
    cond = true_condition(job_conditions, "Restarting")
    cause = str((cond or {}).get("message") or "")
    new = False
    if cond is not None:
        at_text = cond.get("lastTransitionTime") or cond.get("lastUpdateTime")
        at, seen = c.parse_rfc3339(at_text), c.parse_rfc3339(last)
        if at is not None and (seen is None or at > seen):
            count, last, new = count + 1, at_text, True
    if not rec and not new:
        return RestartCount(None, 0, limit, cause, False)
    record = {"count": count, "lastRestartTime": last, "sinceCheckpointStep": since}
    return RestartCount(record, count, limit, cause, new)


def limit_message(r: RestartCount, job_name: str, last_exit: str | None = None) -> str:
    """What a tenant reads in the Failed condition and the Event: what happened, what was kept,
    what to do."""
    since = (r.record or {}).get("sinceCheckpointStep") or 0
    where = f"without a checkpoint after step {since}" if since else "without writing a checkpoint"
    parts = [f"PyTorchJob {job_name} restarted {r.count} times {where}, more than the operator's backoffLimit "
             f"({r.limit}): stopped, so no pod holds GPUs; the run's checkpoints are kept"]  # fmt: skip
    if r.cause:
        parts.append(f"last restart: {r.cause}")
    if last_exit:
        parts.append(last_exit)
    parts.append(f"find the cause in `kubectl get events --field-selector involvedObject.name={job_name}` (exit codes) "
                 "and the pods' logs; a failed run does not train again: create a new CPTRun")  # fmt: skip
    return "; ".join(parts)


def last_exit_from_pods(pods: Iterable[dict[str, Any]]) -> str | None:
    """The latest non-zero exit of a trainer container among the run's pods (the failed pod is
    often already deleted by the training operator: then None)."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for pod in pods:
        for st in (pod.get("status") or {}).get("containerStatuses") or []:
            if st.get("name") != CONTAINER_NAME:
                continue
            for state in (st.get("state") or {}, st.get("lastState") or {}):
                term = state.get("terminated") or {}
                if term.get("exitCode"):
                    found.append((str(term.get("finishedAt") or ""), str((pod.get("metadata") or {}).get("name")), term))
    if not found:
        return None
    _, pod_name, term = max(found, key=lambda x: x[0])
    text = f"pod {pod_name} exited {term['exitCode']}"
    if term.get("reason"):
        text += f" ({term['reason']})"
    if term.get("message"):
        text += f": {c.truncate_message(str(term['message']), 300)}"
    return text
