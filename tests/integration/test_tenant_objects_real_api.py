"""A hostile tenant against a real kube-apiserver: objects pre-created under the names a run's
children take are never adopted, and a stop always goes through, even once the platform's
settings refuse the run.

The operator runs as its ServiceAccount with the chart's RBAC; the tenant as tenant-a with
`edit` in its namespace. A look-alike PyTorchJob is created by the admin identity: on a
cluster whose training operator aggregates its roles into `edit` (Kubeflow's manifests do),
a tenant can create one too.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flows import REPORT, apply_all, condition, wait_phase
from harness import OperatorProcess, eventually
from harness import test_settings as operator_settings
from integration_flows import LONG, play_kubelet, record_answers, refused
from integration_setup import Identity
from manifests import example

from cpt_operator import kube
from cpt_operator.render.names import pytorchjob_name, run_labels, trainer_configmap_name

pytestmark = pytest.mark.timeout(300)
RUN = "docs-cpt"


async def accepted_reason(client: kube.KubeClient, ns: str) -> str | None:
    body = await client.get(kube.CPTRUNS, ns, RUN)
    return condition((body or {}).get("status") or {}, "Accepted").get("reason")


@pytest.mark.parametrize("kind", ["ConfigMap", "PyTorchJob"])
async def test_an_object_the_tenant_made_under_a_childs_name_is_never_adopted(
    identities: dict[str, Identity], namespace: str, kind: str
) -> None:
    op = OperatorProcess(connection=identities["operator"].connection())
    answers = record_answers(op)
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    admin = kube.KubeClient(identities["admin"].connection(), user_agent="test-admin")
    objs = example("minimal", namespace)
    labels = run_labels(namespace, RUN, "trainer")  # labelled exactly like the operator's
    if kind == "ConfigMap":
        res, name = kube.CONFIGMAPS, trainer_configmap_name(RUN)
        await tenant.create(res, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "data": {"trainer.json": "{}"},
                                             "metadata": {"name": name, "namespace": namespace, "labels": labels}})  # fmt: skip
    else:
        res, name = kube.PYTORCHJOBS, pytorchjob_name(RUN)
        fake = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"runPolicy": {"suspend": False}, "pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {
                    "spec": {"containers": [{"name": "pytorch", "image": "tenant/anything:1"}]}}}}}}  # fmt: skip
        await admin.create(res, namespace, fake)
    await op.start(timeout=LONG)
    try:
        await apply_all(tenant, list(objs.values()))
        await play_kubelet(admin, namespace, "docs", REPORT)
        await eventually(lambda: _is(accepted_reason(tenant, namespace), "ObjectNotOwned"), timeout=LONG, what="Accepted=False ObjectNotOwned")
        run = await tenant.get(kube.CPTRUNS, namespace, RUN)
        status = run.get("status") or {}
        assert condition(status, "Created")["status"] == "False"
        assert "not owned by this CPTRun" in condition(status, "Accepted")["message"]
        assert "checkpointStorage" not in status and "pytorchJobName" not in status
        existing = await admin.get(res, namespace, name)
        assert not existing["metadata"].get("ownerReferences")  # untouched: not taken over
        if kind == "ConfigMap":
            assert existing["data"] == {"trainer.json": "{}"}
            assert await admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)) is None  # nothing started on it
        else:
            # The tenant suspends the run: the look-alike job is not the operator's to control.
            await tenant.patch(kube.CPTRUNS, namespace, RUN, {"spec": {"suspend": True}})
            await eventually(lambda: _generation_seen(tenant, namespace), timeout=LONG, what="the suspend seen")
            assert (await admin.get(res, namespace, name))["spec"]["runPolicy"]["suspend"] is False

        # Level-based: once the tenant removes its object, the run goes on as usual.
        await admin.delete(res, namespace, name)
        await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)) if kind == "ConfigMap"
                         else _owned_job(admin, namespace, run["metadata"]["uid"]), timeout=LONG, what="the run's own PyTorchJob")  # fmt: skip
    finally:
        await op.stop()
        await tenant.close()
        await admin.close()
    assert not refused(answers, namespace), "the chart's RBAC refused the operator"


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def _generation_seen(client: kube.KubeClient, ns: str) -> bool:
    body = await client.get(kube.CPTRUNS, ns, RUN)
    return (body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"]


async def _owned_job(client: kube.KubeClient, ns: str, uid: str) -> bool:
    job = await client.get(kube.PYTORCHJOBS, ns, pytorchjob_name(RUN))
    return bool(job) and any(o.get("uid") == uid for o in job["metadata"].get("ownerReferences") or [])


async def test_a_suspend_goes_through_after_the_platform_stops_allowing_the_runs_image(
    identities: dict[str, Identity], namespace: str
) -> None:
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    admin = kube.KubeClient(identities["admin"].connection(), user_agent="test-admin")
    settings = operator_settings()
    objs = example("minimal", namespace)
    image = settings.allowed_trainer_images[0].replace("*", "x")  # "registry.example/cpt/x:x"
    objs["CPTRun/docs-cpt"]["spec"]["trainer"] = {"image": image}
    op = OperatorProcess(connection=identities["operator"].connection(), settings=settings)
    await op.start(timeout=LONG)
    try:
        await apply_all(tenant, list(objs.values()))
        await play_kubelet(admin, namespace, "docs", REPORT)
        await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)), timeout=LONG, what="PyTorchJob")
        await wait_phase(tenant, kube.CPTRUNS, namespace, RUN, "Starting", timeout=LONG)
    finally:
        await op.stop()
    # The platform narrows its image allowlist and restarts the operator; the tenant suspends.
    narrowed = copy.deepcopy(settings)
    narrowed.allowed_trainer_images = ["registry.example/approved/*:*"]
    op = OperatorProcess(connection=identities["operator"].connection(), settings=narrowed)
    await op.start(timeout=LONG)
    try:
        await tenant.patch(kube.CPTRUNS, namespace, RUN, {"spec": {"suspend": True}})

        async def suspended() -> bool:
            job = await admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
            return job["spec"]["runPolicy"].get("suspend") is True

        await eventually(suspended, timeout=LONG, what="runPolicy.suspend true on the refused run's job")
        # The job is patched inside the handler; Kopf writes the status when the handler returns,
        # so the condition may trail the job by a moment: wait for it, do not read it once.
        async def refused_for_image() -> bool:
            return await accepted_reason(tenant, namespace) == "ImageNotAllowed"

        await eventually(refused_for_image, timeout=LONG, what="Accepted=False reason ImageNotAllowed")
        # Resuming a refused run does not start it again.
        await tenant.patch(kube.CPTRUNS, namespace, RUN, {"spec": {"suspend": False}})
        await eventually(lambda: _generation_seen(tenant, namespace), timeout=LONG, what="the resume seen")
        assert (await admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)))["spec"]["runPolicy"]["suspend"] is True
    finally:
        await op.stop()
        await tenant.close()
        await admin.close()
