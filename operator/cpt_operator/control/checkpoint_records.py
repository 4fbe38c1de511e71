"""`status.checkpoints`: recording what storage lists, when a recorded step may be deleted,
and which records a pass writes back (pure functions).

Confirmation. A step may be deleted only when it was recorded by an earlier pass and listed
on two consecutive passes: once a listing is missing a step (a partial Prometheus answer, a
Prometheus HA pair whose replicas disagree), the record says so (`UNLISTED`) and the step
must be listed twice in a row again before it may go. Both markers live in the record's
`keptFor` (the schema has no other place for them, and a field it lacks is pruned by the API
server): they are reasons the checkpoint is still kept.

Bound. The list written back holds every checkpoint the policy keeps, the listed records still
waiting for confirmation, and the newest MAX_DELETED_RECORDS deleted ones, within the CRD's
maxItems and MAX_RECORDS_BYTES; a record left out is only history (deleted) or is recorded
again by the next pass that lists it. Without a bound a long run (1,000 records: 100k steps saving
every 100) passed maxItems and every status patch was refused: status froze, and a decided
halt was never applied while deletions went on.
"""

from __future__ import annotations

import json
from typing import Any

from annotated_types import MaxLen

from cpt_operator.api.cptrun import CPTRunStatus
from cpt_operator.control.storage import CheckpointStore

UNCONFIRMED = "unconfirmed"
"""keptFor marker: not yet listed on two consecutive passes (new, or listed again after a pass
that missed it); it is not deleted on this pass."""
UNLISTED = "unlisted"
"""keptFor marker: recorded but missing from this pass's listing; it is not deleted until two
consecutive passes list it again."""
DELETING = "deleting"
"""keptFor marker: its deletion was decided and failed part-way (a storage error): the next
pass retries it whether listed or not (its COMPLETE marker may be gone already)."""
MARKERS = (UNCONFIRMED, UNLISTED, DELETING)

MAX_DELETED_RECORDS = 20
"""How many deleted checkpoints stay on record (the newest; those whose deletion the trainer
has yet to carry out first)."""
MAX_RECORDS = next(m.max_length for m in CPTRunStatus.model_fields["checkpoints"].metadata if isinstance(m, MaxLen))
"""The CRD's maxItems of status.checkpoints: a longer list makes the API server refuse the patch."""
MAX_RECORDS_BYTES = 160 * 1024
"""Most JSON bytes of status.checkpoints, so the whole CPTRun stays far below etcd's 1.5 MiB
(about 110 records at the longest prefixes, 1,000 at short ones)."""


def policy_reasons(record: dict[str, Any]) -> list[str]:
    """The policy's reasons in a record's keptFor (without the confirmation markers)."""
    return [r for r in record.get("keptFor") or [] if r not in MARKERS]


def new_record(step: int, uri: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A record for a listed checkpoint, scored from its own metrics.json."""
    scores = metrics.get("general_scores") or {}
    return {
        "step": step,
        "uri": uri,
        **({"domainPerplexity": metrics["domain_perplexity"]} if metrics.get("domain_perplexity") is not None else {}),
        **({"generalScore": max(scores.values())} if scores else {}),
        **({"generalRegression": metrics["general_regression"]} if metrics.get("general_regression") is not None else {}),
        **({"attempt": int(metrics["attempt"])} if isinstance(metrics.get("attempt"), (int, float)) else {}),
        "keptFor": [],
        "deleted": False,
    }


def record_listed(
    store: CheckpointStore, existing: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], set[int], float | None, dict[str, Any] | None]:
    """(records, listed steps, baseline domain perplexity, the tokenizer-extension report of
    metrics.json): the existing records plus one for every complete checkpoint the store lists
    that is not recorded yet (read from its metrics.json). Raises the store's StorageError."""
    records = {int(r["step"]): dict(r) for r in existing}
    listed: set[int] = set()
    baseline_domain: float | None = None
    extension: dict[str, Any] | None = None
    for entry in store.list_complete():
        listed.add(entry.step)
        metrics = store.read_metrics(entry.step) or {}
        baseline_domain = metrics.get("baseline_domain_perplexity", baseline_domain)
        if isinstance(metrics.get("tokenizer_extension"), dict):
            extension = metrics["tokenizer_extension"]  # the same in every checkpoint of a run
        if entry.step in records and (not records[entry.step].get("deleted") or store.deletes_later):
            continue  # recorded already; or its deletion is decided and the trainer has yet to carry it out
        records[entry.step] = new_record(entry.step, entry.uri, metrics)
    return [records[s] for s in sorted(records)], listed, baseline_domain, extension


def confirmed_steps(previous: list[dict[str, Any]], listed: set[int]) -> set[int]:
    """The steps that may be deleted on this pass: recorded (live) by the pass before, listed by
    it (no UNLISTED marker), and listed again now; or a deletion that failed part-way (DELETING)."""
    out = set()
    for r in previous:
        marks = r.get("keptFor") or []
        if r.get("deleted"):
            continue
        if DELETING in marks or (int(r["step"]) in listed and UNLISTED not in marks):
            out.add(int(r["step"]))
    return out


def with_marker(reasons: list[str], step: int, listed: set[int], confirmed: set[int]) -> list[str]:
    """A live record's keptFor: the policy's reasons and the confirmation marker, if any."""
    if step not in listed:
        return [*reasons, UNLISTED]
    if step not in confirmed:
        return [*reasons, UNCONFIRMED]
    return list(reasons)


def record_bytes(record: dict[str, Any]) -> int:
    return len(json.dumps(record, separators=(",", ":")))


def bound_records(records: list[dict[str, Any]], listed: set[int], best: int | None) -> tuple[list[dict[str, Any]], int]:
    """The records to write back, by step, and how many the policy keeps were left out.

    In order, while within MAX_RECORDS and MAX_RECORDS_BYTES: the best, the other kept ones
    (newest first), the listed ones awaiting confirmation (a failed deletion first, then oldest
    first, so a backlog is worked off in order), then the newest MAX_DELETED_RECORDS deleted
    (pending ones, still listed, first). A record neither kept, listed nor being deleted is
    dropped: if its step is listed again it is recorded anew and confirmed anew. Only a policy
    keeping more checkpoints than the status can hold leaves a kept one out; it is kept all the
    same (it is listed, so the next pass records it again)."""
    live = [r for r in records if not r.get("deleted")]
    kept = sorted((r for r in live if policy_reasons(r)), key=lambda r: (int(r["step"]) != best, -int(r["step"])))
    waiting = sorted(
        (r for r in live if not policy_reasons(r) and (int(r["step"]) in listed or DELETING in (r.get("keptFor") or []))),
        key=lambda r: (DELETING not in (r.get("keptFor") or []), int(r["step"])),
    )
    deleted = sorted((r for r in records if r.get("deleted")), key=lambda r: (int(r["step"]) not in listed, -int(r["step"])))
    out: list[dict[str, Any]] = []
    size = 2  # the list's brackets
    left_out = 0
    for group, is_kept in ((kept, True), (waiting, False), (deleted[:MAX_DELETED_RECORDS], False)):
        for r in group:
            cost = record_bytes(r) + 1
            if len(out) < MAX_RECORDS and size + cost <= MAX_RECORDS_BYTES:
                out.append(r)
                size += cost
            elif is_kept:
                left_out += 1
    return sorted(out, key=lambda r: int(r["step"])), left_out
