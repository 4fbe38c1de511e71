"""Helpers shared by the run and corpus reconcilers: the Secret check, ensure-object, status diff."""

from __future__ import annotations

from typing import Any

import kopf

from cpt_operator import conditions as c
from cpt_operator import kube
from cpt_operator.conditions import conditions_with  # noqa: F401  (re-exported for the reconcilers)
from cpt_operator.api.common import SecretReference
from cpt_operator.decide.checks import Refusal
from cpt_operator.decide.run import not_owned_refusal
from cpt_operator.decide.dependencies import backoff_delay
from cpt_operator.handlers.context import OperatorContext
from cpt_operator.ownership import controlled_by


async def check_secret(ctx: OperatorContext, namespace: str, ref: SecretReference | None) -> Refusal | None:
    """None when the Secret exists in `namespace` with both keys. Only key names are looked at;
    values are never logged, copied or stored."""
    if ref is None:
        return None
    secret = await ctx.kube.get(kube.SECRETS, namespace, ref.name)
    if secret is None:
        return Refusal(c.SECRET_NOT_FOUND, f"Secret {ref.name!r} does not exist in namespace {namespace!r}; create it with keys {ref.access_key_id_key} and {ref.secret_access_key_key}")  # noqa: E501
    keys = set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())
    missing = [k for k in (ref.access_key_id_key, ref.secret_access_key_key) if k not in keys]
    if missing:
        return Refusal(c.SECRET_KEY_MISSING, f"Secret {ref.name!r} has no key {', '.join(missing)}")
    return None


def retry_later(ctx: OperatorContext, refusal: Refusal, retry: int) -> kopf.TemporaryError:
    """Re-check later what no watch reports (a missing Secret, an object the run does not own):
    bounded, doubling delay; the condition says why meanwhile."""
    delay = backoff_delay(retry, ctx.tuning.retry_later_base, ctx.tuning.retry_later_cap)
    return kopf.TemporaryError(f"{refusal.message} (re-checked in {delay:.0f} s)", delay=delay)


class NotOwned(Exception):
    """An object of the name a child takes exists and is not controlled by its owner."""

    def __init__(self, kind: str, name: str):
        super().__init__(not_owned_refusal(kind, name).message)
        self.kind, self.name = kind, name


async def ensure_object(ctx: OperatorContext, res: kube.Resource, body: dict[str, Any],
                        owner_uid: str | None = None) -> tuple[dict[str, Any], bool]:  # fmt: skip
    """Create `body`, or return the existing object of that name (idempotent; a restart or a
    duplicate event never makes a second one). Returns (object, created). With `owner_uid`, an
    existing object counts only when that owner controls it: another is never adopted (NotOwned)."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        return await ctx.kube.create(res, namespace, body), True
    except kube.Conflict:
        existing = await ctx.kube.get(res, namespace, name)
        if existing is None:  # deleted in between: the next event retries
            raise kopf.TemporaryError(f"{res.plural} {name} vanished while being created", delay=2) from None
        if owner_uid is not None and not controlled_by(existing, owner_uid):
            raise NotOwned(body.get("kind", res.plural), name) from None
        return existing, False


def write_status(patch: Any, current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Put only the changed status fields into Kopf's patch; True when anything changed."""
    changed = False
    for key, value in desired.items():
        if current.get(key) != value:
            patch.status[key] = value
            changed = True
    return changed
