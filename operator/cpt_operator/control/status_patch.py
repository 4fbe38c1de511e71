"""The status patch a control pass sends: only what differs from the status it read (pure).

A pass decides the whole of the fields it owns (`control_step`'s `status_patch`); sending
them all every 30 s rewrote every run's status (checkpoints, evaluations) whether anything
had changed or not. `changed_fields` turns the decision into the smallest JSON merge patch
(RFC 7386) that makes the status read equal to it on those fields.
"""

from __future__ import annotations

from typing import Any


def changed_fields(current: dict[str, Any], desired: dict[str, Any]) -> dict[str, Any]:
    """The merge patch taking `current` to `desired` on `desired`'s keys; {} when nothing changed.

    A top-level key `desired` lacks is left alone (another writer's field). Below the top level
    an object is `desired`'s in full: a key it no longer has is removed (null). Lists are
    replaced whole, as a merge patch does; `None` in `desired` removes the key."""
    out: dict[str, Any] = {}
    for key, want in desired.items():
        have = current.get(key)
        if want is None:
            if have is not None:
                out[key] = None
        elif isinstance(want, dict) and isinstance(have, dict):
            sub = _object_diff(have, want)
            if sub:
                out[key] = sub
        elif want != have:
            out[key] = want
    return out


def _object_diff(have: dict[str, Any], want: dict[str, Any]) -> dict[str, Any]:
    out = changed_fields(have, want)
    for key in have:
        if key not in want and have[key] is not None:
            out[key] = None
    return out
