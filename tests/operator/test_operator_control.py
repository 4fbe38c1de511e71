"""The metrics control loop for real: Debian's Prometheus scrapes real exporters on loopback
(standing in for two trainers' pods), and the Kopf operator, running against the emulated API
server, reads it. A run whose general score degrades is halted within two evaluation
intervals after the patience window and its PyTorchJob is suspended; a healthy run never is."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from flows import condition, eventually, status_of, wait_object
from loopback_servers import free_port, prometheus_factory  # noqa: F401  (fixture)
from trainer_exporter import RUN, TrainerExporter, start_operator, start_run
from cpt_operator import kube
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.render.names import pytorchjob_name, retain_configmap_name

EVAL_INTERVAL = 3.0  # seconds between the fake trainers' evaluations


async def test_degrading_run_is_halted_and_healthy_run_is_not(cluster: Any, client: kube.KubeClient, prometheus_factory: Any) -> None:
    _, url = cluster
    prom = prometheus_factory()
    trainers = TrainerExporter(prom)
    op = await start_operator(url, prom.url)
    try:
        sick, healthy = "tenant-sick", "tenant-healthy"
        for ns in (sick, healthy):
            await start_run(client, ns, trainers)
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
        trainers.close()


async def test_prometheus_down_is_metrics_unavailable_and_never_halts(cluster: Any, client: kube.KubeClient) -> None:
    _, url = cluster
    op = await start_operator(url, f"http://127.0.0.1:{free_port()}", interval=0.3)  # nothing listens there
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
    prom = prometheus_factory()
    trainers = TrainerExporter(prom)
    op = await start_operator(url, prom.url)
    ns = "tenant-pvc"
    try:
        await start_run(client, ns, trainers)
        job = await client.get(kube.PYTORCHJOBS, ns, pytorchjob_name(RUN))
        pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
        assert {"name": "retain", "configMap": {"name": retain_configmap_name(RUN), "optional": True}} in pod["volumes"]
        for step in range(500, 3001, 500):
            trainers.list_checkpoint(ns, step, 15.0 if step == 1000 else 25.0, 0.01)
        trainers.evaluate(ns, 3000, 0.01)
        cm = await wait_object(client, kube.CONFIGMAPS, ns, retain_configmap_name(RUN), timeout=30)

        async def released() -> Any:
            # The first pass that sees a step keeps it; the next one that lists it again decides.
            got = await client.get(kube.CONFIGMAPS, ns, retain_configmap_name(RUN))
            retain = json.loads(got["data"]["retain.json"]) if got else {}
            return retain if retain.get("delete") else None

        retain = await eventually(released, timeout=30, what="the retain list releasing checkpoints")
        assert retain == {"keep": ["step-00001000", "step-00002500", "step-00003000"], "decidedThroughStep": 2000,
                          "delete": ["step-00000500", "step-00001500", "step-00002000"]}  # fmt: skip
        assert cm["metadata"]["ownerReferences"][0]["kind"] == "CPTRun"

        async def rotated() -> Any:
            st = await status_of(client, kube.CPTRUNS, ns, RUN)
            return st if st.get("bestCheckpoint") else None

        st = await eventually(rotated, timeout=10, what="the rotation in status")
        assert st["bestCheckpoint"]["step"] == 1000
        assert sorted(r["step"] for r in st["checkpoints"] if r["deleted"]) == [500, 1500, 2000]
    finally:
        await op.stop()
        trainers.close()


async def test_a_retain_configmap_the_tenant_created_is_never_adopted(cluster: Any, client: kube.KubeClient, prometheus_factory: Any) -> None:
    """A tenant creates `<run>-retain` before the run: the trainer would read that list, so the
    operator leaves it as it is, says so (condition and one Warning Event) and releases nothing."""
    _, url = cluster
    prom = prometheus_factory()
    trainers = TrainerExporter(prom)
    op = await start_operator(url, prom.url)
    ns = "tenant-squat"
    name = retain_configmap_name(RUN)
    tenant_list = json.dumps({"keep": [], "decidedThroughStep": 10**9}) + "\n"
    try:
        await client.create(kube.CONFIGMAPS, ns, {"apiVersion": "v1", "kind": "ConfigMap",
                                                  "metadata": {"name": name, "namespace": ns}, "data": {"retain.json": tenant_list}})  # fmt: skip
        await start_run(client, ns, trainers)
        for step in range(500, 3001, 500):
            trainers.list_checkpoint(ns, step, 25.0, 0.01)
        trainers.evaluate(ns, 3000, 0.01)

        async def refused() -> Any:
            st = await status_of(client, kube.CPTRUNS, ns, RUN)
            c = condition(st, "CheckpointsRotated")
            return st if c and c["reason"] == "RetainListNotOwned" else None

        st = await eventually(refused, timeout=30, what="CheckpointsRotated=False RetainListNotOwned")
        c = condition(st, "CheckpointsRotated")
        assert c["status"] == "False" and f"ConfigMap {name} exists and is not owned by this run" in c["message"]
        await asyncio.sleep(2.0)  # several more passes
        st = await status_of(client, kube.CPTRUNS, ns, RUN)
        assert not any(r["deleted"] for r in st.get("checkpoints") or [])
        cm = await client.get(kube.CONFIGMAPS, ns, name)
        assert cm["data"]["retain.json"] == tenant_list and not cm["metadata"].get("ownerReferences")
        events = [e for e in await client.list(kube.Resource("", "v1", "events"), ns) if e.get("reason") == "RetainListNotOwned"]
        assert len(events) == 1 and events[0]["type"] == "Warning" and "delete it" in events[0]["message"]
    finally:
        await op.stop()
        trainers.close()
