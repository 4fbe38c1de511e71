"""Kopf in-memory indexes (watch caches) the reconcilers read instead of calling the API.

Keys always start with the namespace, so a lookup for a run can only find objects of
the run's own namespace.
"""

from __future__ import annotations

from typing import Any

from cpt_operator.render import names


def first(index: Any, key: tuple[str, ...]) -> dict[str, Any] | None:
    """The one value of `key` in a Kopf index (or None)."""
    if index is None or key not in index:
        return None
    for value in index[key]:
        return value
    return None


def corpus_entry(namespace: str, name: str, body: Any) -> dict[Any, Any]:
    status = dict(body.get("status") or {})
    return {(namespace, name): {"spec": dict(body.get("spec") or {}), "status": status, "uid": body.get("metadata", {}).get("uid")}}


def policy_entry(namespace: str, name: str, body: Any) -> dict[Any, Any]:
    return {(namespace, name): {"spec": dict(body.get("spec") or {})}}


def child_entry(namespace: str, labels: Any, body: Any, owner_label: str) -> dict[Any, Any]:
    """A child (PyTorchJob or Job) by its owner's name, only if it carries our labels."""
    owner = (labels or {}).get(owner_label)
    if not owner or (labels or {}).get(names.LABEL_MANAGED_BY) != names.MANAGED_BY:
        return {}
    meta = body.get("metadata") or {}
    slim = {
        "metadata": {"name": meta.get("name"), "namespace": namespace, "uid": meta.get("uid"),
                     "annotations": dict(meta.get("annotations") or {}),
                     # Who controls it: a job of the run's name the run does not own is never adopted.
                     "ownerReferences": [dict(o) for o in meta.get("ownerReferences") or [] if o.get("controller")],
                     # Kueue's queue label says who owns runPolicy.suspend (decide/suspend.py).
                     "labels": {k: v for k, v in (labels or {}).items() if k == names.KUEUE_QUEUE_LABEL}},
        "spec": {"runPolicy": dict((body.get("spec") or {}).get("runPolicy") or {}),
                 "completions": (body.get("spec") or {}).get("completions")},
        "status": dict(body.get("status") or {}),
    }  # fmt: skip
    return {(namespace, owner): slim}


def run_dependencies(spec: dict[str, Any]) -> tuple[list[str], str | None]:
    """Corpus names and the policy name a (raw) run spec refers to."""
    corpora = [c.get("name") for c in spec.get("corpora") or [] if isinstance(c, dict) and c.get("name")]
    for g in (spec.get("evaluation") or {}).get("generalEvals") or []:
        if isinstance(g, dict) and g.get("corpus") and g["corpus"] not in corpora:
            corpora.append(g["corpus"])
    frm = (spec.get("tokenizerExtension") or {}).get("fromCorpus")
    if frm and frm not in corpora:
        corpora.append(frm)
    return corpora, (spec.get("checkpointPolicyRef") or {}).get("name")


def run_dependency_entries(namespace: str, name: str, spec: Any) -> dict[Any, Any]:
    """Which runs to re-check when a Corpus or CheckpointPolicy changes."""
    corpora, policy = run_dependencies(dict(spec or {}))
    out: dict[Any, Any] = {(namespace, "Corpus", c): name for c in corpora}
    if policy:
        out[(namespace, "CheckpointPolicy", policy)] = name
    return out
