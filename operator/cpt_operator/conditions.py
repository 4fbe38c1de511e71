"""Condition types and reasons of Corpus and CPTRun, and the one pure function that sets them.

Conditions follow metav1.Condition: `lastTransitionTime` moves only when `status` flips,
`observedGeneration` says which spec generation the condition speaks about, and a
condition that did not change is returned unchanged (so the caller patches nothing).
Reasons are CamelCase and stable: tenants and alerts match on them.
"""

from __future__ import annotations

import datetime
from typing import Any

# --------------------------------------------------------------------------- types

ACCEPTED = "Accepted"
"""The spec is valid and allowed by the platform (node pool, image, immutable fields)."""
DEPENDENCIES_READY = "DependenciesReady"
"""Every referenced Corpus is Ready and the CheckpointPolicy and Secrets exist (CPTRun)."""
CREATED = "Created"
"""The PyTorchJob (CPTRun) or curation Job (Corpus) exists."""
RUNNING = "Running"
"""Training pods run (mirrors the PyTorchJob's Running condition)."""
SUSPENDED = "Suspended"
"""The PyTorchJob is suspended: by the tenant (spec.suspend) or until Kueue admits it."""
SUCCEEDED = "Succeeded"
"""The run finished (terminal)."""
FAILED = "Failed"
"""The run or curation failed (terminal for this generation)."""
READY = "Ready"
"""Corpus: curated and tokenized; CPTRuns may train on it."""
EVALUATION_UNAVAILABLE = "EvaluationUnavailable"
"""A configured general eval (a benchmark's task file, lm-evaluation-harness) cannot run: the
trainer stopped before training, naming the eval (CPTRun; set only when True)."""

RUN_CONDITION_TYPES = (ACCEPTED, DEPENDENCIES_READY, CREATED, RUNNING, SUSPENDED, SUCCEEDED, FAILED)
CORPUS_CONDITION_TYPES = (ACCEPTED, READY, FAILED)

# --------------------------------------------------------------------------- reasons

# Accepted
SPEC_ACCEPTED = "SpecAccepted"
INVALID_SPEC = "InvalidSpec"
UNKNOWN_NODE_POOL = "UnknownNodePool"
NODE_POOL_NOT_ALLOWED = "NodePoolNotAllowed"
GPUS_EXCEED_POOL = "GPUsExceedNodePool"
IMAGE_NOT_ALLOWED = "ImageNotAllowed"
IMMUTABLE_FIELD_CHANGED = "ImmutableFieldChanged"
CONFLICTING_CREDENTIALS = "ConflictingCredentialSecrets"
# DependenciesReady
DEPENDENCIES_RESOLVED = "DependenciesResolved"
WAITING_FOR_CORPUS = "WaitingForCorpus"
CORPUS_NOT_FOUND = "CorpusNotFound"
CORPUS_FAILED = "CorpusFailed"
CHECKPOINT_POLICY_NOT_FOUND = "CheckpointPolicyNotFound"
SECRET_NOT_FOUND = "SecretNotFound"
SECRET_KEY_MISSING = "SecretKeyMissing"
# Created
NOT_CREATED = "NotCreated"
OBJECT_NOT_OWNED = "ObjectNotOwned"
JOB_CREATED = "JobCreated"
JOB_MISSING = "JobMissing"
# Running / Suspended / Succeeded / Failed (mirrored from the PyTorchJob)
JOB_RUNNING = "JobRunning"
JOB_RESTARTING = "JobRestarting"
JOB_NOT_RUNNING = "JobNotRunning"
SUSPENDED_BY_TENANT = "SuspendedByTenant"
WAITING_FOR_ADMISSION = "WaitingForQueueAdmission"
NOT_SUSPENDED = "NotSuspended"
JOB_SUCCEEDED = "JobSucceeded"
JOB_FAILED = "JobFailed"
RESTART_LIMIT_EXCEEDED = "RestartLimitExceeded"
"""Failed: the PyTorchJob restarted more than the operator's backoffLimit without a new checkpoint
(decide/restarts.py); the operator stopped it."""
# EvaluationUnavailable
BENCHMARK_CANNOT_RUN = "BenchmarkCannotRun"
NOT_FINISHED = "NotFinished"
# Corpus
CURATION_PENDING = "CurationPending"
CURATING = "Curating"
CURATION_SUCCEEDED = "CurationSucceeded"
CURATION_FAILED = "CurationFailed"

EVENT_MESSAGE_LIMIT = 1024
"""Kubernetes rejects Event messages over 1 KiB-ish in practice; we truncate like kubeflow does."""
CONDITION_MESSAGE_LIMIT = 32768


def parse_rfc3339(text: Any) -> datetime.datetime | None:
    """A metav1.Time (or any ISO 8601 text) as an aware datetime, UTC when it names no zone; None
    when it is empty or not a time."""
    if not isinstance(text, str) or not text:
        return None
    try:
        ts = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=datetime.timezone.utc)


def now_rfc3339(now: datetime.datetime | None = None) -> str:
    """`now` (default: the current time) as RFC 3339 UTC with seconds, as metav1.Time serialises."""
    now = now or datetime.datetime.now(tz=datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def truncate_message(message: str, limit: int = EVENT_MESSAGE_LIMIT) -> str:
    """`message` cut to `limit` characters, ending with '...' when cut."""
    if len(message) <= limit:
        return message
    return message[: max(0, limit - 3)] + "..."


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: str | bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """A new list with condition `type_` set; the input is not modified.

    `status` is "True"/"False"/"Unknown" (or a bool). `lastTransitionTime` becomes `now`
    only when the status flips (or the condition is new); reason, message and
    observedGeneration are updated in place otherwise. Order of the others is kept.
    """
    status_text = ("True" if status else "False") if isinstance(status, bool) else status
    if status_text not in ("True", "False", "Unknown"):
        raise ValueError(f"condition status must be True, False or Unknown, not {status!r}")
    result = [dict(c) for c in (conditions or [])]
    new = {
        "type": type_,
        "status": status_text,
        "reason": reason,
        "message": truncate_message(message, CONDITION_MESSAGE_LIMIT),
        "lastTransitionTime": now,
    }
    if generation is not None:
        new["observedGeneration"] = generation
    for i, old in enumerate(result):
        if old.get("type") == type_:
            if old.get("status") == status_text and old.get("lastTransitionTime"):
                new["lastTransitionTime"] = old["lastTransitionTime"]
            result[i] = new
            return result
    result.append(new)
    return result


def find_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of that type, or None."""
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    cond = find_condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def conditions_with(current: list[dict[str, Any]], updates: list[tuple[str, Any, str, str]], generation: int | None, now: str) -> list[dict[str, Any]]:  # noqa: E501
    """`current` with each (type, status, reason, message) update applied in order."""
    out = [dict(x) for x in current]
    for type_, status, reason, message in updates:
        out = set_condition(out, type_, status, reason, message, generation, now)
    return out
