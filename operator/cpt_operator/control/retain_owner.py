"""Whose is the run's retain ConfigMap `<run>-retain` (pure).

The trainer deletes what that ConfigMap's list lets go, so the operator writes only a
ConfigMap it owns: one whose controller owner reference is this run's uid. A tenant who
creates `<run>-retain` first (or one left by an earlier run of the same name) is never
patched, and no deletion is decided for the run while it is there: the trainer would read
that list, not the operator's.
"""

from __future__ import annotations

from typing import Any

from cpt_operator.ownership import controlled_by

__all__ = ["controlled_by", "foreign_retain_configmap"]


def foreign_retain_configmap(configmap: dict[str, Any] | None, run_uid: str) -> str | None:
    """A message a tenant can act on when the retain ConfigMap exists and is not this run's;
    None when it is absent or the run's own."""
    if configmap is None or controlled_by(configmap, run_uid):
        return None
    name = (configmap.get("metadata") or {}).get("name", "")
    return (
        f"ConfigMap {name} exists and is not owned by this run (no controller ownerReference to its uid): delete it; "
        "the operator writes the run's retain list there and never takes over an object it did not create"
    )
