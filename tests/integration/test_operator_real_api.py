"""The Kopf operator, for real, against a real kube-apiserver as its own ServiceAccount
identity with exactly the chart's RBAC (cluster scope), a real garbage collector and a real
Job controller.

There is no kubelet: where a pod would run, the test writes the pod's status as a kubelet
would (phase and the container's termination message), and the real Job controller turns
that into the Job's status. Nothing runs the PyTorchJob controller yet, so the test writes
the PyTorchJob's conditions as the training operator would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from flows import REPORT, apply_all, condition, wait_phase
from harness import OperatorProcess, eventually
from integration_flows import LONG, play_kubelet, record_answers, refused, refused_logs
from integration_setup import Forbidden, Identity
from manifests import example

from cpt_operator import kube
from cpt_operator.render.names import curation_job_name, pytorchjob_name, trainer_configmap_name

pytestmark = pytest.mark.timeout(300)


def test_tenant_rbac_as_the_chart_grants_it(identities: dict[str, Identity], namespace: str, admin: Identity) -> None:
    a, b = identities["tenant-a"], identities["tenant-b"]
    objs = example("minimal", namespace)
    for obj in objs.values():
        a.apply(obj)  # create (server-side apply) in its own namespace
    run = objs["CPTRun/docs-cpt"]
    assert a.get("cpt.dev/v1alpha1", "CPTRun", "docs-cpt", namespace)["spec"]["resources"]["nodes"] == 1
    # Edits its own run...
    edited = a.request("PATCH", a.path_of(run), {"spec": {"suspend": True}}, "application/merge-patch+json")
    assert edited.status_code == 200, edited.text
    # ...reads its status, and cannot write it (status is the operator's).
    assert a.request("GET", a.path_of(run) + "/status").status_code == 200
    forged = a.request("PATCH", a.path_of(run) + "/status", {"status": {"phase": "Succeeded"}}, "application/merge-patch+json")
    assert forged.status_code == 403, forged.text
    # Another namespace is out of reach, both ways.
    other = f"{namespace[:50]}-other"
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    with pytest.raises(Forbidden):
        a.apply({**run, "metadata": {"name": "docs-cpt", "namespace": other}})
    assert b.request("GET", b.path_of(run)).status_code == 403
    assert b.request("PATCH", b.path_of(run), {"spec": {"suspend": False}}, "application/merge-patch+json").status_code == 403
    # Nor can a tenant read the operator's own objects or Secrets elsewhere.
    assert a.request("GET", "/api/v1/namespaces/cpt-system/secrets").status_code == 403


async def test_corpus_to_pytorchjob_to_garbage_collection(identities: dict[str, Identity], namespace: str, kopf_errors: Any) -> None:
    op = OperatorProcess(connection=identities["operator"].connection())
    answers = record_answers(op)
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    admin = kube.KubeClient(identities["admin"].connection(), user_agent="test-admin")
    await op.start(timeout=LONG)
    try:
        objs = example("minimal", namespace)
        await apply_all(tenant, list(objs.values()))  # as the tenant applies them

        # Corpus -> Job; the real Job controller creates its pod and, once it succeeded, completes the Job.
        await play_kubelet(admin, namespace, "docs", REPORT)
        corpus = await wait_phase(tenant, kube.CORPORA, namespace, "docs", "Ready", timeout=LONG)
        assert corpus["documents"] == REPORT["documents"]
        job = await admin.get(kube.JOBS, namespace, curation_job_name("docs"))
        assert any(c["type"] == "Complete" and c["status"] == "True" for c in job["status"]["conditions"])

        # CPTRun -> ConfigMap + PyTorchJob, owned by the run.
        pj = await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt")), timeout=LONG, what="PyTorchJob")
        run = await tenant.get(kube.CPTRUNS, namespace, "docs-cpt")
        assert pj["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
        await wait_phase(tenant, kube.CPTRUNS, namespace, "docs-cpt", "Starting", timeout=LONG)
        # The training operator's part: Running, then the run follows.
        conds = [{"type": "Created", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                 {"type": "Running", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"}]  # fmt: skip
        await admin.patch_status(kube.PYTORCHJOBS, namespace, pj["metadata"]["name"], {"status": {"conditions": conds}})
        status = await wait_phase(tenant, kube.CPTRUNS, namespace, "docs-cpt", "Running", timeout=LONG)
        assert condition(status, "Running")["status"] == "True"

        # Deleting the run: the real garbage collector deletes its children.
        assert await tenant.delete(kube.CPTRUNS, namespace, "docs-cpt")

        async def children_gone() -> bool:
            return (await admin.get(kube.PYTORCHJOBS, namespace, pj["metadata"]["name"]) is None
                    and await admin.get(kube.CONFIGMAPS, namespace, trainer_configmap_name("docs-cpt")) is None)  # fmt: skip

        await eventually(children_gone, timeout=LONG, what="the run's PyTorchJob and ConfigMap garbage-collected")
    finally:
        await op.stop()
        await tenant.close()
        await admin.close()
    denied = refused(answers, namespace)
    assert not denied, f"the chart's RBAC refused the operator: {denied}"
    assert answers, "the operator made no request of its own"
    assert not refused_logs(kopf_errors.records, namespace), refused_logs(kopf_errors.records, namespace)
    await asyncio.sleep(0)


def test_the_operator_reaches_tenant_data_only_in_opted_in_namespaces(identities: dict[str, Identity], namespace: str,
                                                                      admin: Identity) -> None:  # fmt: skip
    """The default install (cluster scope, no rbac.tenantNamespaces): the operator watches every
    namespace, but reads Secrets, writes ConfigMaps and creates Jobs and PyTorchJobs only in the
    namespaces the platform opted in (`namespace` is; a fresh one is not)."""
    operator = identities["operator"]
    other = f"{namespace[:50]}-not-opted"
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    admin.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": other}, "stringData": {"k": "v"}})
    admin.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3", "namespace": namespace}, "stringData": {"k": "v"}})
    assert operator.request("GET", f"/api/v1/namespaces/{other}/secrets/s3").status_code == 403
    assert operator.request("GET", f"/api/v1/namespaces/{namespace}/secrets/s3").status_code == 200
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}, "data": {}}
    assert operator.request("POST", f"/api/v1/namespaces/{other}/configmaps", configmap).status_code == 403
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "probe"}, "spec": {"template": {"spec": {
        "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}  # fmt: skip
    assert operator.request("POST", f"/apis/batch/v1/namespaces/{other}/jobs", job, params={"dryRun": "All"}).status_code == 403
    assert operator.request("POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job, params={"dryRun": "All"}).status_code == 201
    # Watching everywhere still works: the runs of every namespace are listed.
    assert operator.request("GET", "/apis/cpt.dev/v1alpha1/cptruns").status_code == 200
    admin.request("DELETE", f"/api/v1/namespaces/{other}")


async def test_a_plain_text_answer_of_the_real_server_is_a_404_not_a_crash(identities: dict[str, Identity]) -> None:
    """kube-apiserver answers a path it does not serve (an API group whose CRDs are not
    installed, Kueue's on a cluster without it) with `404 page not found` in plain text. The
    operator's client read every answer as JSON, and the run's reconcile failed on that."""
    client = kube.KubeClient(identities["admin"].connection(), user_agent="test-admin")
    try:
        assert await client.api_group("no-such-group.example.com") is None
        assert await client.get(kube.Resource("no-such-group.example.com", "v1", "things"), "default", "x") is None
    finally:
        await client.close()
