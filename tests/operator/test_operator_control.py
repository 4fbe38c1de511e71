"""The metrics control loop for real: Debian's Prometheus scrapes a real exporter on loopback
(standing in for two trainers), and the Kopf operator, running against the emulated API
server, reads it. A run whose general score degrades is halted within two evaluation
intervals after the patience window and its PyTorchJob is suspended; a healthy run never is."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from flows import apply_all, condition, eventually, finish_curation, status_of, wait_object
from harness import OperatorProcess
from harness import test_settings as operator_settings
from loopback_servers import free_port, prometheus_factory  # noqa: F401  (fixture)
from manifests import example
from cpt_operator import kube
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.render.names import pytorchjob_name, retain_configmap_name
from cpt_trainer.contract import metrics as names

EVAL_INTERVAL = 3.0  # seconds between the fake trainers' evaluations
RUN = "docs-cpt"


class FakeTrainers:
    """The trainer's metric names and labels, values driven by the test."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {
            spec.name: Gauge(spec.name, spec.help, spec.labels, registry=self.registry)
            for spec in (names.STEP, names.EVAL_STEP, names.GENERAL_REGRESSION, names.DOMAIN_PERPLEXITY, names.TOKENS_PER_SECOND,
                         names.CHECKPOINT_PRESENT, names.CHECKPOINT_DOMAIN_PERPLEXITY, names.CHECKPOINT_GENERAL_REGRESSION,
                         names.BASELINE_DOMAIN_PERPLEXITY)  # fmt: skip
        }
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def evaluate(self, namespace: str, step: int, regression: float) -> None:
        for metric, value in ((names.STEP, step), (names.EVAL_STEP, step), (names.GENERAL_REGRESSION, regression),
                              (names.DOMAIN_PERPLEXITY, 20.0 - step / 1000), (names.TOKENS_PER_SECOND, 1e5)):  # fmt: skip
            self.gauges[metric.name].labels(namespace, RUN).set(value)


    def list_checkpoint(self, namespace: str, step: int, domain: float, regression: float) -> None:
        """What a trainer exports for a checkpoint on its volume."""
        self.gauges[names.CHECKPOINT_PRESENT.name].labels(namespace, RUN, str(step)).set(1)
        self.gauges[names.CHECKPOINT_DOMAIN_PERPLEXITY.name].labels(namespace, RUN, str(step)).set(domain)
        self.gauges[names.CHECKPOINT_GENERAL_REGRESSION.name].labels(namespace, RUN, str(step)).set(regression)
        self.gauges[names.BASELINE_DOMAIN_PERPLEXITY.name].labels(namespace, RUN).set(30.0)


async def start_run(client: kube.KubeClient, namespace: str) -> None:
    await apply_all(client, list(example("minimal", namespace).values()))
    await finish_curation(client, namespace, "docs")
    await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
    await client.patch(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN),
                       {"status": {"conditions": [{"type": "Running", "status": "True"}]}})  # fmt: skip


async def test_degrading_run_is_halted_and_healthy_run_is_not(cluster: Any, client: kube.KubeClient, prometheus_factory: Any) -> None:
    _, url = cluster
    trainers = FakeTrainers()
    prom = prometheus_factory([f"127.0.0.1:{trainers.port}"])
    settings = operator_settings()
    settings.prometheus_url = prom.url
    settings.control_interval_seconds = 0.5
    op = OperatorProcess(url, settings)
    await op.start()
    try:
        sick, healthy = "tenant-sick", "tenant-healthy"
        for ns in (sick, healthy):
            await start_run(client, ns)
        evaluation = CPTRunSpec.model_validate((await client.get(kube.CPTRUNS, sick, RUN))["spec"]).evaluation
        patience = evaluation.patience  # the schema defaults: 3 evaluations over 3 %
        assert evaluation.forgetting_threshold == 0.03
        halted_after: float | None = None
        loop = asyncio.get_running_loop()
        for k in range(1, patience + 3):
            trainers.evaluate(sick, k * 500, 0.06 if k >= 2 else 0.0)  # over the threshold from the 2nd evaluation
            trainers.evaluate(healthy, k * 500, 0.01)
            started = loop.time()
            while loop.time() - started < EVAL_INTERVAL:
                st = await status_of(client, kube.CPTRUNS, sick, RUN)
                if st.get("phase") == "Halted" and halted_after is None:
                    halted_after = k + (loop.time() - started) / EVAL_INTERVAL
                await asyncio.sleep(0.2)
        # the patience-th evaluation over the threshold is evaluation number patience + 1
        assert halted_after is not None, "the degrading run was never halted"
        assert patience + 1 <= halted_after < patience + 1 + 2, halted_after
        st = await status_of(client, kube.CPTRUNS, sick, RUN)
        forgetting = condition(st, "ForgettingThresholdExceeded")
        assert forgetting["status"] == "True" and "6.00% exceeds the 3.0% threshold" in forgetting["message"]
        job = await client.get(kube.PYTORCHJOBS, sick, pytorchjob_name(RUN))
        assert job["spec"]["runPolicy"]["suspend"] is True
        ok = await status_of(client, kube.CPTRUNS, healthy, RUN)
        assert ok["phase"] == "Running" and condition(ok, "ForgettingThresholdExceeded")["status"] == "False"
        assert condition(ok, "MetricsAvailable")["status"] == "True"
        assert (await client.get(kube.PYTORCHJOBS, healthy, pytorchjob_name(RUN)))["spec"]["runPolicy"]["suspend"] is False
        assert ok["progress"]["step"] == (patience + 2) * 500
    finally:
        await op.stop()
        trainers.server.shutdown()


async def test_prometheus_down_is_metrics_unavailable_and_never_halts(cluster: Any, client: kube.KubeClient) -> None:
    _, url = cluster
    settings = operator_settings()
    settings.prometheus_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings.control_interval_seconds = 0.3
    op = OperatorProcess(url, settings)
    await op.start()
    try:
        await start_run(client, "tenant-a")
        for _ in range(50):
            st = await status_of(client, kube.CPTRUNS, "tenant-a", RUN)
            if condition(st, "MetricsAvailable"):
                break
            await asyncio.sleep(0.2)
        assert condition(st, "MetricsAvailable")["reason"] == "MetricsUnavailable"
        assert st["phase"] == "Running"
        assert (await client.get(kube.PYTORCHJOBS, "tenant-a", pytorchjob_name(RUN)))["spec"]["runPolicy"]["suspend"] is False
    finally:
        await op.stop()


async def test_pvc_checkpoints_are_rotated_through_the_retain_configmap(cluster: Any, client: kube.KubeClient, prometheus_factory: Any) -> None:
    """The minimal example keeps its checkpoints on a PVC (keepLastN 2, keepBestK 1): the
    operator decides from the trainer's listing and writes the retain list the pod mounts."""
    _, url = cluster
    trainers = FakeTrainers()
    prom = prometheus_factory([f"127.0.0.1:{trainers.port}"])
    settings = operator_settings()
    settings.prometheus_url = prom.url
    settings.control_interval_seconds = 0.5
    op = OperatorProcess(url, settings)
    await op.start()
    ns = "tenant-pvc"
    try:
        await start_run(client, ns)
        job = await client.get(kube.PYTORCHJOBS, ns, pytorchjob_name(RUN))
        pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        assert {"name": "retain", "configMap": {"name": retain_configmap_name(RUN), "optional": True}} in pod["volumes"]
        for step in range(500, 3001, 500):
            trainers.list_checkpoint(ns, step, 15.0 if step == 1000 else 25.0, 0.01)
        trainers.evaluate(ns, 3000, 0.01)
        cm = await wait_object(client, kube.CONFIGMAPS, ns, retain_configmap_name(RUN), timeout=30)
        retain = json.loads(cm["data"]["retain.json"])
        assert retain == {"keep": ["step-00001000", "step-00002500", "step-00003000"], "decidedThroughStep": 3000}
        assert cm["metadata"]["ownerReferences"][0]["kind"] == "CPTRun"

        async def rotated() -> Any:
            st = await status_of(client, kube.CPTRUNS, ns, RUN)
            return st if st.get("bestCheckpoint") else None

        st = await eventually(rotated, timeout=10, what="the rotation in status")
        assert st["bestCheckpoint"]["step"] == 1000
        assert sorted(r["step"] for r in st["checkpoints"] if r["deleted"]) == [500, 1500, 2000]
    finally:
        await op.stop()
        trainers.server.shutdown()
