"""Whose an object is (pure): the operator acts only on objects it created for their owner.

An object counts as a run's (or a Corpus's) when its controller owner reference names that
owner's uid: the operator sets one on everything it creates. Names and labels can be copied by
anyone who may create objects in the namespace, so they never make an object the operator's.
(A tenant can write a reference to its own run's uid on its own object: that misleads only
its own run, in its own namespace, and the object stays what the tenant wrote.)
"""

from __future__ import annotations

from typing import Any


def controlled_by(body: dict[str, Any] | None, uid: str) -> bool:
    """True when `body`'s controller owner reference names `uid`."""
    owners = ((body or {}).get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(isinstance(o, dict) and o.get("uid") == uid and o.get("controller") is True for o in owners)
