"""Which replica runs the control loop: the one Kopf's peering keeps active.

With two replicas, Kopf pauses the handlers of every replica that sees a live peer of a
higher priority (or of the same priority: then all pause). The control loop is a background
task, not a Kopf handler, so it reads the same peering object each pass and applies the same
rule (kopf/_core/engines/peering.py): one leader, no second mechanism that could disagree.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

from cpt_operator import kube
from cpt_operator.conditions import parse_rfc3339

logger = logging.getLogger("cpt_operator.leadership")

CLUSTER_PEERINGS = kube.Resource("kopf.dev", "v1", "clusterkopfpeerings")
NAMESPACED_PEERINGS = kube.Resource("kopf.dev", "v1", "kopfpeerings")


@dataclass(frozen=True)
class Peering:
    """This replica's place in Kopf's peering (None in the context: standalone)."""

    name: str
    identity: str
    priority: int
    clusterwide: bool


def decide_active(peers: dict[str, Any], identity: str, priority: int, now: datetime.datetime) -> tuple[bool, str]:
    """Kopf's rule: paused while another live peer has a higher or the same priority.

    `peers` is the peering object's status: {identity: {priority, lifetime, lastseen}}. A peer
    is live until lastseen + lifetime; a record that cannot be read counts as live (pause
    rather than risk two leaders)."""
    for other, info in (peers or {}).items():
        if other == identity or not isinstance(info, dict):
            continue
        seen = parse_rfc3339(str(info.get("lastseen", "")))
        try:
            lifetime = float(info.get("lifetime", 60))
            other_priority = int(info.get("priority", 0))
        except (TypeError, ValueError):
            return False, f"peer {other!r} has an unreadable record"
        if seen is not None and seen + datetime.timedelta(seconds=lifetime) <= now:
            continue  # dead: its record has expired
        if other_priority > priority:
            return False, f"peer {other!r} has a higher priority ({other_priority} > {priority})"
        if other_priority == priority:
            return False, f"peer {other!r} has the same priority ({priority}); Kopf pauses both"
    return True, "no live peer with a higher or the same priority"


class Leadership:
    """Asks the peering object before each pass; logs only when the answer changes."""

    def __init__(self, client: kube.KubeClient, peering: Peering | None):
        self.client = client
        self.peering = peering
        self._last: dict[str, bool] = {}

    async def active(self, namespace: str) -> bool:
        """Whether this replica acts on `namespace` ("" = cluster-wide) now."""
        p = self.peering
        if p is None:
            return True
        try:
            if p.clusterwide:
                body = await self.client.get(CLUSTER_PEERINGS, "", p.name)
            else:
                body = await self.client.get(NAMESPACED_PEERINGS, namespace, p.name)
        except (kube.KubeError, OSError) as exc:
            body, error = None, f"peering object {p.name!r} unreadable: {exc}"
        else:
            error = f"peering object {p.name!r} not found"
        if body is None:
            ok, why = False, error
        else:
            now = datetime.datetime.now(tz=datetime.timezone.utc)
            ok, why = decide_active(body.get("status") or {}, p.identity, p.priority, now)
        if self._last.get(namespace) != ok:
            logger.info("control loop %s%s: %s", "active" if ok else "paused", f" in {namespace}" if namespace else "", why)
            self._last[namespace] = ok
        return ok
