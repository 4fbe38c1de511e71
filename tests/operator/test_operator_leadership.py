"""Only the replica Kopf's peering keeps active runs the control loop: the rule itself, and
the real operator pausing and resuming its loop as peers come and go in the emulated
ClusterKopfPeering."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

from flows import condition, eventually, status_of
from harness import OperatorProcess
from harness import test_settings as operator_settings
from trainer_exporter import RUN, start_run
from cpt_operator import kube
from cpt_operator.handlers.context import Tuning
from cpt_operator.handlers.leadership import CLUSTER_PEERINGS, decide_active

NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.timezone.utc)
PEERING = "cpt-operator-test"


def peer(priority: int, seconds_ago: float, lifetime: int = 60) -> dict[str, Any]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


@pytest.mark.parametrize(
    ("peers", "active"),
    [
        ({}, True),
        ({"me": peer(10, 0)}, True),
        ({"me": peer(10, 0), "low": peer(5, 0)}, True),
        ({"me": peer(10, 0), "high": peer(20, 0)}, False),
        ({"me": peer(10, 0), "same": peer(10, 0)}, False),  # Kopf pauses both
        ({"me": peer(10, 0), "high": peer(20, 61)}, True),  # expired: dead
        ({"me": peer(10, 0), "high": peer(20, 59)}, False),
        ({"me": peer(10, 0), "odd": {"priority": "x"}}, False),  # unreadable: pause rather than two leaders
    ],
)
def test_the_control_loop_follows_kopfs_peering_rule(peers: dict[str, Any], active: bool) -> None:
    ok, why = decide_active(peers, "me", 10, NOW)
    assert ok is active, why


def now_text(seconds_ago: float = 0) -> str:
    return (datetime.datetime.now(tz=datetime.timezone.utc) - datetime.timedelta(seconds=seconds_ago)).isoformat()


def control_passes(op: OperatorProcess) -> int:
    """Control passes begun: each lists the CPTRuns once (a pass with nothing new writes no status)."""
    path = kube.CPTRUNS.path("")
    return sum(1 for verb, p in list(op.kube.calls or []) if verb == "list" and p == path)


async def test_a_paused_replica_runs_no_control_pass(cluster: Any, client: kube.KubeClient) -> None:
    _, url = cluster
    await client.create(CLUSTER_PEERINGS, "", {
        "apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING},
        "status": {"older-replica": {"priority": 5, "lifetime": 60, "lastseen": now_text()}},
    })  # fmt: skip
    settings = operator_settings()
    settings.control_interval_seconds = 0.3  # no Prometheus: each pass writes MetricsAvailable=False
    op = OperatorProcess(url, settings, tuning=Tuning(retry_later_base=0.5, retry_later_cap=1.0, peering_name=PEERING),
                         peering_priority=10)  # fmt: skip
    await op.start()
    ns = "tenant-peered"
    try:
        # Highest priority: Kopf reconciles and the loop runs.
        await start_run(client, ns)

        async def unavailable() -> Any:
            return condition(await status_of(client, kube.CPTRUNS, ns, RUN), "MetricsAvailable") or None

        assert (await eventually(unavailable, timeout=15, what="a control pass"))["reason"] == "MetricsUnavailable"

        # A replica of a higher priority appears: Kopf pauses, and so does the loop.
        await client.patch(CLUSTER_PEERINGS, "", PEERING, {"status": {"newer-replica": {"priority": 50, "lifetime": 60, "lastseen": now_text()}}})
        await asyncio.sleep(1.0)  # the pass in flight finishes, the next one reads the peering
        paused_at = control_passes(op)
        await asyncio.sleep(2.0)  # about 6 control intervals
        assert control_passes(op) == paused_at, "a paused replica still ran control passes"

        # Its record expires (it died without cleaning up): this replica takes over again.
        await client.patch(CLUSTER_PEERINGS, "", PEERING, {"status": {"newer-replica": {"priority": 50, "lifetime": 60, "lastseen": now_text(120)}}})

        async def resumed() -> Any:
            return control_passes(op) > paused_at or None

        await eventually(resumed, timeout=10, what="the control loop resuming")
    finally:
        await op.stop()
