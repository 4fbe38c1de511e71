"""The one startup handler: Kopf's settings for this operator, one reason per setting."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import kopf
from kopf._cogs.structs import bodies

from cpt_operator.api.common import GROUP
from cpt_operator.handlers.context import OperatorContext
from cpt_operator.handlers.leadership import Peering

FINALIZER = f"{GROUP}/delete-checkpoints"
DIFFBASE_KEY = "last-handled-digest"


class DigestDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Stores, instead of the whole last-handled spec, one short digest per top-level spec
    field (plus labels and annotations): a few hundred bytes whatever the spec's size, so
    a large CPTRun never overflows the 256 KiB annotation limit. Kopf still sees which
    field changed; the handlers reconcile from the full body and never read old values."""

    def build(self, *, body: bodies.Body, extra_fields: Any = None) -> bodies.BodyEssence:
        essence: dict[str, Any] = dict(super().build(body=body, extra_fields=extra_fields))

        def h(value: Any) -> str:
            return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]

        out: dict[str, Any] = {}
        spec = essence.get("spec")
        if isinstance(spec, dict):
            out["spec"] = {key: h(value) for key, value in spec.items()}
        meta = essence.get("metadata") or {}
        digests = {key: h(meta[key]) for key in ("labels", "annotations") if meta.get(key)}
        if digests:
            out["metadata"] = digests
        return out  # type: ignore[return-value]


def configure_kopf(settings: kopf.OperatorSettings, ctx: OperatorContext) -> None:
    """Apply our choices to Kopf's settings (called from the @kopf.on.startup handler)."""
    # A finalizer under our group, added only to runs whose policy deletes checkpoints with them.
    settings.persistence.finalizer = FINALIZER
    # Handler progress (retries, delays) in a few small annotations under our group, not
    # in status (which the later control loop writes often) and not under kopf.zalando.org.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # Digests instead of a copy of the spec (see DigestDiffBaseStorage).
    settings.persistence.diffbase_storage = DigestDiffBaseStorage(prefix=GROUP, key=DIFFBASE_KEY)
    # Only our explicit Events (kopf.info/warn), not every log line: tenants read them.
    settings.posting.enabled = True
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    settings.posting.reporting_component = "cpt-operator"
    # Server-side watch timeout: watches are re-established regularly, so a silently dead
    # connection cannot freeze the operator; the client gives up a bit later than the server.
    settings.watching.server_timeout = int(ctx.tuning.watch_server_timeout)
    settings.watching.client_timeout = ctx.tuning.watch_server_timeout + 30
    settings.watching.connect_timeout = 30
    # API errors are retried with a short, bounded backoff (seconds), then the handler retries.
    settings.networking.error_backoffs = (1, 2, 5, 10, 20)
    settings.networking.request_timeout = 60
    # Handlers that raise unexpected errors are retried with a bounded backoff, not forever fast.
    settings.execution.default_backoff = 30
    settings.queueing.error_delays = (1, 2, 5, 10, 20, 30, 60, 120, 300)
    # With two replicas exactly one is active; refuse to run unpeered if the peering object is missing.
    if not settings.peering.standalone:
        settings.peering.name = ctx.tuning.peering_name
        settings.peering.mandatory = True
        # The control loop is not a Kopf handler: it follows the same peering (handlers/leadership).
        if ctx.identity is None:
            raise RuntimeError("peering needs the replica's identity in OperatorContext.identity (cpt_operator.run sets it)")
        ctx.peering = Peering(settings.peering.name, ctx.identity, settings.peering.priority, settings.peering.clusterwide)
