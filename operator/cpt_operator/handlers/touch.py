"""Wake an owner's reconciler when something it depends on changed.

Kopf reacts to changes of an object, not of its children or of the Corpus it waits for.
A child's or dependency's event therefore writes a small digest of what changed into an
`observed.cpt.dev/...` annotation of each owner: a metadata-only merge patch that does not
race the owner's status (which only the owner's own handlers write, through Kopf). The
owner's update handler then reconciles from the watch caches. Nothing is patched when the
digest did not change (the per-object memo), so unrelated events cost nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cpt_operator import kube
from cpt_operator.handlers.context import context_of
from cpt_operator.render import names

OBSERVED_PREFIX = "observed.cpt.dev"
ANNOTATION_JOB = f"{OBSERVED_PREFIX}/job"
ANNOTATION_DEPENDENCIES = f"{OBSERVED_PREFIX}/dependencies"


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def child_summary(event_type: str | None, body: Any) -> str:
    """What of a child matters to its owner: existence, suspend, its conditions."""
    if event_type == "DELETED":
        return "deleted"
    status = body.get("status") or {}
    conds = [(x.get("type"), x.get("status")) for x in status.get("conditions") or []]
    run_policy = (body.get("spec") or {}).get("runPolicy") or {}
    return _digest([conds, bool(run_policy.get("suspend")), status.get("succeeded"), status.get("failed"), status.get("active")])


def dependency_summary(event_type: str | None, body: Any) -> str:
    if event_type == "DELETED":
        return "deleted"
    status = body.get("status") or {}
    return _digest([body.get("spec"), status.get("phase"), status.get("outputUri")])


async def _touch(memo: Any, res: kube.Resource, namespace: str, name: str, key: str, value: str) -> None:
    ctx = context_of(memo)
    await ctx.kube.patch(res, namespace, name, {"metadata": {"annotations": {key: value}}})


async def touch_owner(event: dict[str, Any], body: Any, namespace: str, labels: Any, memo: Any,
                      owner_label: str, owner: kube.Resource, **_: Any) -> None:  # fmt: skip
    """On a child's event: touch the CPTRun/Corpus named by its `owner_label` if it changed."""
    labels = labels or {}
    owner_name = labels.get(owner_label)
    if not owner_name or labels.get(names.LABEL_MANAGED_BY) != names.MANAGED_BY:
        return
    summary = child_summary(event.get("type"), body)
    if getattr(memo, "observed_summary", None) == summary:
        return
    if event.get("type") == "DELETED":
        # Deleted with its owner (the deletion handler deletes the job first): touching an
        # owner that is being finalized would only race Kopf's removal of the finalizer.
        current = await context_of(memo).kube.get(owner, namespace, owner_name)
        if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
            return
    await _touch(memo, owner, namespace, owner_name, ANNOTATION_JOB, summary)
    memo.observed_summary = summary


async def touch_dependents(event: dict[str, Any], body: Any, namespace: str, name: str, memo: Any,
                           kind: str, runs_by_dependency: Any, **_: Any) -> None:  # fmt: skip
    """On a Corpus/CheckpointPolicy event: touch every CPTRun of its namespace that refers to it."""
    summary = dependency_summary(event.get("type"), body)
    if getattr(memo, "observed_summary", None) == summary:
        return
    key = (namespace, kind, name)
    runs = sorted(set(runs_by_dependency[key])) if key in runs_by_dependency else []
    for run in runs:
        await _touch(memo, kube.CPTRUNS, namespace, run, ANNOTATION_DEPENDENCIES, f"{kind}.{name}.{summary}")
    memo.observed_summary = summary
