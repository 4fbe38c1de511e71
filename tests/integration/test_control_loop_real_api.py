"""The control loop against the real API server: Debian's Prometheus scrapes a trainer's
exporter on loopback (discovered with the labels the operator rendered on the PyTorchJob, as
the chart's PodMonitor discovers a pod), and the Kopf operator, running as its ServiceAccount
with the chart's RBAC, halts the run whose general score degrades: phase Halted, the
ForgettingThresholdExceeded condition, the PyTorchJob suspended (no Kueue here). A healthy run
beside it keeps running. There is no kubelet: the curation pod's status and the PyTorchJob's
Running condition are written as the kubelet and the training operator would."""

from __future__ import annotations

from typing import Any

import pytest
from flows import apply_all, condition, wait_phase
from harness import OperatorProcess, eventually
from harness import test_settings as operator_settings
from integration_flows import LONG, play_kubelet, record_answers, refused
from integration_setup import Identity, prepare_tenant_namespace
from loopback_servers import prometheus_factory  # noqa: F401  (fixture)
from manifests import example
from trainer_exporter import RUN, TOTAL_TOKENS, TrainerExporter

from cpt_operator import kube
from cpt_operator.render.names import pytorchjob_name

pytestmark = pytest.mark.timeout(420)


async def start_run(tenant: kube.KubeClient, admin: kube.KubeClient, namespace: str, trainers: TrainerExporter) -> None:
    objs = example("minimal", namespace)
    objs[f"CPTRun/{RUN}"]["spec"]["training"]["totalTokens"] = TOTAL_TOKENS
    await apply_all(tenant, list(objs.values()))  # as the tenant applies them
    await play_kubelet(admin, namespace, "docs", {"documents": 10})
    await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)), timeout=LONG, what="PyTorchJob")
    await trainers.start_pod(admin, namespace)  # its master pod's exporter, discovered by Prometheus
    conds = [{"type": "Created", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
             {"type": "Running", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"}]  # fmt: skip
    await admin.patch_status(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN), {"status": {"conditions": conds}})
    await wait_phase(tenant, kube.CPTRUNS, namespace, RUN, "Running", timeout=LONG)


async def test_a_degrading_run_is_halted_on_the_real_api_server(
    identities: dict[str, Identity], namespace: str, admin: Identity, prometheus_factory: Any  # noqa: F811
) -> None:
    prom = prometheus_factory()
    trainers = TrainerExporter(prom)
    healthy = f"{namespace[:50]}-ok"
    prepare_tenant_namespace(identities, admin, healthy)  # a second tenant namespace with the same grants
    settings = operator_settings()
    settings.prometheus_url = prom.url
    settings.control_interval_seconds = 1.0
    op = OperatorProcess(connection=identities["operator"].connection(), settings=settings)
    answers = record_answers(op)
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    adm = kube.KubeClient(admin.connection(), user_agent="test-admin")
    await op.start(timeout=LONG)
    try:
        for ns in (namespace, healthy):
            await start_run(tenant, adm, ns, trainers)
        step = 0

        async def halted() -> Any:
            nonlocal step
            step += 500  # a new evaluation every poll until the halt: over the threshold for the sick run
            trainers.evaluate(namespace, step, 0.06)
            trainers.evaluate(healthy, step, 0.01)
            st = (await tenant.get(kube.CPTRUNS, namespace, RUN)).get("status") or {}
            return st if st.get("phase") == "Halted" else None

        status = await eventually(halted, timeout=LONG, interval=3.0, what="the degrading run Halted")
        forgetting = condition(status, "ForgettingThresholdExceeded")
        assert forgetting["status"] == "True" and "exceeds the 3.0% threshold" in forgetting["message"]
        await eventually(lambda: _suspended(adm, namespace), timeout=LONG, what="the PyTorchJob suspended")
        ok = (await tenant.get(kube.CPTRUNS, healthy, RUN))["status"]
        assert ok["phase"] == "Running" and condition(ok, "ForgettingThresholdExceeded")["status"] == "False"
        assert (await adm.get(kube.PYTORCHJOBS, healthy, pytorchjob_name(RUN)))["spec"]["runPolicy"].get("suspend") is not True
    finally:
        await op.stop()
        trainers.close()
        await tenant.close()
        await adm.close()
    assert not refused(answers, namespace, healthy), refused(answers, namespace, healthy)


async def _suspended(adm: kube.KubeClient, namespace: str) -> bool:
    job = await adm.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
    return bool(job["spec"]["runPolicy"].get("suspend"))
