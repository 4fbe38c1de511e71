"""The control pass and the reconcile handler both write a run's status: the pass writes only
on top of the version it read (a real API server's resourceVersion precondition, which the
emulator enforces), and the reconcile never un-suspends a job the pass has just halted."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import REGISTRY

from flows import condition, status_of, wait_phase
from harness import OperatorProcess
from harness import test_settings as operator_settings
from trainer_exporter import RUN, start_run
from cpt_operator import kube
from cpt_operator.handlers import control
from cpt_operator.handlers.context import OperatorContext
from cpt_operator.handlers.run import halted_meanwhile


def own_context(url: str) -> OperatorContext:
    """The operator's handler code called from the test's own event loop (its own client)."""
    connection = kube.ClusterConnection(server=url)
    return OperatorContext(settings=operator_settings(), connection=connection, kube=kube.KubeClient(connection))


def conflicts() -> float:
    return REGISTRY.get_sample_value("cpt_operator_status_conflicts_total") or 0.0


async def test_a_control_pass_on_a_stale_read_writes_nothing(cluster: Any, client: kube.KubeClient) -> None:
    _, url = cluster
    op = OperatorProcess(url)  # standalone; its own loop has no Prometheus and a 30 s interval
    await op.start()
    ctx = own_context(url)
    ns = "tenant-race"
    try:
        await start_run(client, ns)
        await wait_phase(client, kube.CPTRUNS, ns, RUN, "Running")
        await asyncio.sleep(1.0)  # the reconciles of the start are done
        stale = await client.get(kube.CPTRUNS, ns, RUN)
        # The reconcile (or the tenant) writes after the pass read the run.
        await client.patch_status(kube.CPTRUNS, ns, RUN, {"status": {"conditions": [
            *stale["status"]["conditions"], {"type": "Probe", "status": "True", "reason": "Written", "message": "by the other writer"}]}})  # fmt: skip
        before = conflicts()
        await control.control_run(ctx, None, stale)  # no Prometheus: the pass wants MetricsAvailable=False
        st = await status_of(client, kube.CPTRUNS, ns, RUN)
        assert conflicts() == before + 1
        assert condition(st, "Probe")["reason"] == "Written"  # not overwritten with the older list
        assert condition(st, "MetricsAvailable") == {}
        await control.control_run(ctx, None, await client.get(kube.CPTRUNS, ns, RUN))  # the next pass, fresh
        st = await status_of(client, kube.CPTRUNS, ns, RUN)
        assert condition(st, "MetricsAvailable")["reason"] == "MetricsUnavailable"
        assert condition(st, "Probe")["reason"] == "Written"
    finally:
        await ctx.kube.close()
        await op.stop()


async def test_a_fresh_read_sees_a_halt_the_reconciled_body_predates(cluster: Any, client: kube.KubeClient) -> None:
    _, url = cluster
    op = OperatorProcess(url)
    await op.start()
    ctx = own_context(url)
    ns = "tenant-halt-race"
    try:
        await start_run(client, ns)
        assert not await halted_meanwhile(ctx, ns, RUN)
        await client.patch_status(kube.CPTRUNS, ns, RUN, {"status": {"phase": "Halted", "halt": {"step": 1500, "action": "Halt"}}})
        assert await halted_meanwhile(ctx, ns, RUN)
    finally:
        await ctx.kube.close()
        await op.stop()
