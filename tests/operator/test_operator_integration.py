"""The Kopf operator running for real against the emulated API server (over HTTP).

Each test has its own namespace; the test plays the tenant (kubectl), the Job
controller, the training operator and Kueue by writing objects and their status.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from flows import REPORT, apply_all, condition, finish_curation, set_job_conditions, status_of, wait_object, wait_phase
from harness import OperatorProcess, RecordingCheckpointStore, eventually
from manifests import apply, example, secret

from cpt_operator import kube, rbac
from cpt_operator.render.names import LABEL_RUN, curation_job_name, pytorchjob_name, trainer_configmap_name

pytestmark = pytest.mark.timeout(90)

RUN = "llama3-8b-legal"


@pytest.fixture()
async def operator(cluster: Any) -> Any:
    op = OperatorProcess(cluster[1])
    await op.start()
    yield op
    await op.stop()


def minimal(namespace: str, **run_changes: Any) -> list[dict[str, Any]]:
    objs = example("minimal", namespace)
    run = objs["CPTRun/docs-cpt"]
    for key, value in run_changes.items():
        run["spec"][key] = value
    return list(objs.values())


async def start_minimal_run(client: kube.KubeClient, ns: str, **run_changes: Any) -> dict[str, Any]:
    await apply_all(client, minimal(ns, **run_changes))
    await finish_curation(client, ns, "docs")
    return await wait_object(client, kube.PYTORCHJOBS, ns, pytorchjob_name("docs-cpt"))


async def test_create_renders_jobs_and_status_follows_children(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    objs = example("legal-cpt", namespace)
    await apply(client, secret(namespace))
    await apply_all(client, list(objs.values()))

    job = await wait_object(client, kube.JOBS, namespace, curation_job_name("legal-contracts"))
    corpus = await client.get(kube.CORPORA, namespace, "legal-contracts")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 8
    assert job["metadata"]["ownerReferences"][0]["uid"] == corpus["metadata"]["uid"]
    await wait_phase(client, kube.CORPORA, namespace, "legal-contracts", "Curating")
    run_status = await wait_phase(client, kube.CPTRUNS, namespace, RUN, "WaitingForCorpus")
    assert condition(run_status, "DependenciesReady")["reason"] == "WaitingForCorpus"
    assert "legal-contracts" in condition(run_status, "DependenciesReady")["message"]
    assert await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)) is None

    await finish_curation(client, namespace, "legal-contracts", REPORT)
    await finish_curation(client, namespace, "general-replay")
    corpus_status = await wait_phase(client, kube.CORPORA, namespace, "legal-contracts", "Ready")
    assert corpus_status["documents"] == 9100 and corpus_status["shards"] == 3
    assert corpus_status["stages"][0] == {"name": "exact_dedup", "input": 10000, "removed": 900, "modified": 0}
    assert condition(corpus_status, "Ready")["status"] == "True"

    pj = await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
    run = await client.get(kube.CPTRUNS, namespace, RUN)
    assert pj["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    assert pj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert pj["spec"]["runPolicy"]["suspend"] is True  # queued: Kueue admits it
    assert pj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "legal-team-queue"
    cm = await client.get(kube.CONFIGMAPS, namespace, trainer_configmap_name(RUN))
    assert "QUtJQQ" not in str(cm) and "c2VjcmV0" not in str(cm)
    assert '"s3://legal-team-data/curated/contracts-v1"' in cm["data"]["trainer.json"]

    status = await wait_phase(client, kube.CPTRUNS, namespace, RUN, "Pending")
    assert condition(status, "Suspended")["reason"] == "WaitingForQueueAdmission"
    assert status["pytorchJobName"] == pytorchjob_name(RUN) and status["startedAt"]

    await set_job_conditions(client, namespace, RUN, "Created", "Running", suspend=False)  # Kueue admitted it
    status = await wait_phase(client, kube.CPTRUNS, namespace, RUN, "Running")
    assert condition(status, "Running")["status"] == "True"
    assert all(c.get("observedGeneration") == 1 for c in status["conditions"])
    await set_job_conditions(client, namespace, RUN, "Created", "Running", "Restarting")
    await wait_phase(client, kube.CPTRUNS, namespace, RUN, "Restarting")
    await set_job_conditions(client, namespace, RUN, "Created", "Running", "Succeeded")
    status = await wait_phase(client, kube.CPTRUNS, namespace, RUN, "Succeeded")
    assert status["completedAt"] and condition(status, "Succeeded")["status"] == "True"


async def test_failed_job_fails_the_run(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    await start_minimal_run(client, namespace)
    await set_job_conditions(client, namespace, "docs-cpt", "Created", "Running", "Failed")
    status = await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Failed")
    assert condition(status, "Failed")["reason"] == "JobFailed"


async def test_suspend_and_resume_without_queue(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    pj = await start_minimal_run(client, namespace)
    assert pj["spec"]["runPolicy"]["suspend"] is False
    await set_job_conditions(client, namespace, "docs-cpt", "Created", "Running")
    await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Running")

    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"spec": {"suspend": True}})
    status = await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Suspended")
    assert condition(status, "Suspended")["reason"] == "SuspendedByTenant"
    assert status["observedGeneration"] == 2
    pj = await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt"))
    assert pj["spec"]["runPolicy"]["suspend"] is True

    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"spec": {"suspend": False}})

    async def resumed() -> bool:
        job = await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt"))
        return job["spec"]["runPolicy"]["suspend"] is False

    await eventually(resumed, what="runPolicy.suspend false")


async def test_operator_does_not_fight_kueue(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    pj = await start_minimal_run(client, namespace, resources={"nodePool": "h100-80gb", "nodes": 1, "gpusPerNode": 8, "queueName": "team-q"})
    assert pj["spec"]["runPolicy"]["suspend"] is True
    await set_job_conditions(client, namespace, "docs-cpt", "Created", "Running", suspend=False)  # Kueue admits
    await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Running")
    # The tenant suspends: the operator suspends the job; on resume it hands it back to Kueue.
    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"spec": {"suspend": True}})
    await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Suspended")
    calls_before = len(operator.kube.calls)
    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"spec": {"suspend": False}})
    status = await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Pending")
    assert condition(status, "Suspended")["reason"] == "WaitingForQueueAdmission"
    job = await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt"))
    assert job["spec"]["runPolicy"]["suspend"] is True  # not un-suspended by the operator
    pj_path = kube.PYTORCHJOBS.path(namespace, pytorchjob_name("docs-cpt"))
    assert ("patch", pj_path) not in operator.kube.calls[calls_before:]


WORKLOADS = kube.Resource("kueue.x-k8s.io", "v1beta1", "workloads")


async def test_a_tenant_suspend_of_an_admitted_job_deactivates_its_workload(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    """Kueue un-suspends an admitted job whatever sets runPolicy.suspend: the stop that sticks is
    the Workload's spec.active (here the test plays Kueue; tests/realcluster runs the real one)."""
    pj = await start_minimal_run(client, namespace, resources={"nodePool": "h100-80gb", "nodes": 1, "gpusPerNode": 8, "queueName": "team-q"})
    workload = {"apiVersion": "kueue.x-k8s.io/v1beta1", "kind": "Workload",
                "metadata": {"name": "pytorchjob-docs-cpt-1", "namespace": namespace,
                             "labels": {"kueue.x-k8s.io/job-uid": pj["metadata"]["uid"]},
                             "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": pj["metadata"]["name"],
                                                  "uid": pj["metadata"]["uid"], "controller": True}]},
                "spec": {"active": True, "queueName": "team-q"}}  # fmt: skip
    await client.create(WORKLOADS, namespace, workload)
    await set_job_conditions(client, namespace, "docs-cpt", "Created", "Running", suspend=False)  # Kueue admits
    await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Running")
    calls_before = len(operator.kube.calls)

    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"spec": {"suspend": True}})

    async def deactivated() -> Any:
        wl = await client.get(WORKLOADS, namespace, "pytorchjob-docs-cpt-1")
        return wl if wl["spec"]["active"] is False else None

    wl = await eventually(deactivated, what="Workload spec.active false")
    assert wl["metadata"]["annotations"]["cpt.dev/stopped-by-operator"] == "true"
    job = await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt"))
    assert job["spec"]["runPolicy"]["suspend"] is False  # Kueue's to set, after it evicts
    pj_path = kube.PYTORCHJOBS.path(namespace, pytorchjob_name("docs-cpt"))
    assert ("patch", pj_path) not in operator.kube.calls[calls_before:]

    await set_job_conditions(client, namespace, "docs-cpt", "Created", "Suspended", suspend=True)  # Kueue evicts
    await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Suspended")
    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"spec": {"suspend": False}})

    async def reactivated() -> Any:
        wl = await client.get(WORKLOADS, namespace, "pytorchjob-docs-cpt-1")
        return wl if wl["spec"]["active"] is True else None

    wl = await eventually(reactivated, what="Workload spec.active true")
    assert "cpt.dev/stopped-by-operator" not in (wl["metadata"].get("annotations") or {})
    status = await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Pending")
    assert condition(status, "Suspended")["reason"] == "WaitingForQueueAdmission"
    assert ("patch", pj_path) not in operator.kube.calls[calls_before:]


async def test_a_job_labelled_by_kueues_default_queue_is_never_unsuspended(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    """No queueName in the run, but Kueue's webhook gave the job the namespace's `default`
    LocalQueue and suspended it: the operator must not un-suspend it before admission."""
    pj = await start_minimal_run(client, namespace)
    assert pj["spec"]["runPolicy"]["suspend"] is False
    await client.patch(kube.PYTORCHJOBS, namespace, pj["metadata"]["name"],
                       {"metadata": {"labels": {"kueue.x-k8s.io/queue-name": "default"}}, "spec": {"runPolicy": {"suspend": True}}})  # fmt: skip
    status = await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Pending")
    assert condition(status, "Suspended")["reason"] == "WaitingForQueueAdmission"
    assert "'default'" in condition(status, "Suspended")["message"]
    pj_path = kube.PYTORCHJOBS.path(namespace, pj["metadata"]["name"])
    calls = len(operator.kube.calls)
    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"metadata": {"labels": {"touch": "1"}}})  # another reconcile
    await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Pending")
    job = await client.get(kube.PYTORCHJOBS, namespace, pj["metadata"]["name"])
    assert job["spec"]["runPolicy"]["suspend"] is True
    assert ("patch", pj_path) not in operator.kube.calls[calls:]


async def test_missing_corpus_that_later_appears(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    objs = minimal(namespace)
    corpus = next(o for o in objs if o["kind"] == "Corpus")
    await apply_all(client, [o for o in objs if o["kind"] != "Corpus"])
    await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Pending")

    async def corpus_missing() -> dict[str, Any] | None:
        # The policy and the run arrive together: a reconcile that ran before the policy reached
        # the operator's cache reads CheckpointPolicyNotFound, and the policy's event re-runs it.
        cond = condition(await status_of(client, kube.CPTRUNS, namespace, "docs-cpt"), "DependenciesReady")
        return cond if cond.get("reason") == "CorpusNotFound" else None

    cond = await eventually(corpus_missing, what="DependenciesReady reason CorpusNotFound")
    assert "docs" in cond["message"]

    await apply(client, corpus)
    await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "WaitingForCorpus")
    await finish_curation(client, namespace, "docs")
    await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt"))
    status = await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Starting")
    assert condition(status, "DependenciesReady")["status"] == "True"


async def test_missing_secret_is_a_condition_and_rechecked(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    objs = example("legal-cpt", namespace)
    await apply(client, objs["Corpus/general-replay"])
    status = await wait_phase(client, kube.CORPORA, namespace, "general-replay", "Pending")
    assert condition(status, "Ready")["reason"] == "SecretNotFound"
    assert "legal-team-s3" in condition(status, "Ready")["message"]
    await asyncio.sleep(1.5)  # several re-checks pass: still no Job, no busy loop of creates
    assert await client.get(kube.JOBS, namespace, curation_job_name("general-replay")) is None
    secret_gets = [c for c in operator.kube.calls if c == ("get", kube.SECRETS.path(namespace, "legal-team-s3"))]
    assert 1 <= len(secret_gets) <= 6

    await apply(client, secret(namespace))
    await wait_object(client, kube.JOBS, namespace, curation_job_name("general-replay"))
    await wait_phase(client, kube.CORPORA, namespace, "general-replay", "Curating")


async def test_forbidden_pool_and_image_are_conditions(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    await apply_all(client, minimal(namespace, resources={"nodePool": "vip-pool", "nodes": 1, "gpusPerNode": 8}))
    status = await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Pending")
    assert condition(status, "Accepted")["reason"] == "NodePoolNotAllowed"
    await client.patch(kube.CPTRUNS, namespace, "docs-cpt",
                       {"spec": {"resources": {"nodePool": "h100-80gb"}, "trainer": {"image": "evil.example/miner:1"}}})  # fmt: skip

    async def image_refused() -> bool:
        return condition(await status_of(client, kube.CPTRUNS, namespace, "docs-cpt"), "Accepted").get("reason") == "ImageNotAllowed"

    await eventually(image_refused, what="ImageNotAllowed")
    await finish_curation(client, namespace, "docs")
    await asyncio.sleep(0.5)
    assert await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt")) is None


async def test_immutable_change_refused_mutable_change_applied(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    pj = await start_minimal_run(client, namespace)
    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"spec": {"training": {"totalTokens": 1000000000, "learningRate": 2e-5}}})

    async def config_updated() -> bool:
        cm = await client.get(kube.CONFIGMAPS, namespace, trainer_configmap_name("docs-cpt"))
        return '"learning_rate": 2e-05' in cm["data"]["trainer.json"]

    await eventually(config_updated, what="ConfigMap with the new learning rate")
    await client.patch(kube.CPTRUNS, namespace, "docs-cpt", {"spec": {"resources": {"nodePool": "h100-80gb", "nodes": 2, "gpusPerNode": 8}}})

    async def refused() -> dict[str, Any] | None:
        cond = condition(await status_of(client, kube.CPTRUNS, namespace, "docs-cpt"), "Accepted")
        return cond if cond.get("reason") == "ImmutableFieldChanged" else None

    cond = await eventually(refused, what="ImmutableFieldChanged")
    assert "spec.resources.nodes" in cond["message"] and cond["observedGeneration"] == 3
    after = await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt"))
    assert after["spec"]["pytorchReplicaSpecs"] == pj["spec"]["pytorchReplicaSpecs"]


async def test_delete_with_finalizer_deletes_job_then_checkpoints(cluster: Any, client: kube.KubeClient, namespace: str) -> None:
    store = RecordingCheckpointStore(client)
    op = OperatorProcess(cluster[1], store=store)
    await op.start()
    try:
        objs = minimal(namespace)
        next(o for o in objs if o["kind"] == "CheckpointPolicy")["spec"]["deleteWithRun"] = True
        await apply_all(client, objs)
        await finish_curation(client, namespace, "docs")
        await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt"))

        async def finalized() -> bool:
            run = await client.get(kube.CPTRUNS, namespace, "docs-cpt")
            return "cpt.dev/delete-checkpoints" in (run["metadata"].get("finalizers") or [])

        await eventually(finalized, what="the finalizer")
        await client.delete(kube.CPTRUNS, namespace, "docs-cpt")

        async def gone() -> bool:
            return await client.get(kube.CPTRUNS, namespace, "docs-cpt") is None

        await eventually(gone, what="the run to be deleted")
        assert store.calls == [(namespace, "docs-cpt", False)]  # the PyTorchJob was gone first
        assert await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt")) is None
    finally:
        await op.stop()


async def test_deletion_not_blocked_when_operator_is_gone(cluster: Any, client: kube.KubeClient, namespace: str) -> None:
    op = OperatorProcess(cluster[1])
    await op.start()
    try:
        pj = await start_minimal_run(client, namespace)  # policy: deleteWithRun false
        run = await client.get(kube.CPTRUNS, namespace, "docs-cpt")
    finally:
        await op.stop()
    assert not run["metadata"].get("finalizers")
    cm = await client.get(kube.CONFIGMAPS, namespace, trainer_configmap_name("docs-cpt"))
    for child in (pj, cm):  # the garbage collector deletes these with the run
        assert child["metadata"]["ownerReferences"][0]["uid"] == run["metadata"]["uid"]
    await client.delete(kube.CPTRUNS, namespace, "docs-cpt")
    assert await client.get(kube.CPTRUNS, namespace, "docs-cpt") is None  # at once, with no operator running


PHASE_ORDER = ["Pending", "WaitingForCorpus", "Starting", "Running", "Succeeded"]


async def test_restart_mid_reconcile_no_duplicates_no_regress(cluster: Any, client: kube.KubeClient, namespace: str) -> None:
    emulator, url = cluster
    op = OperatorProcess(url)
    await op.start()
    await apply_all(client, minimal(namespace))
    await finish_curation(client, namespace, "docs")
    await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt"), timeout=15)
    await op.kill()  # right after creating the job, before/while writing the run's status
    await set_job_conditions(client, namespace, "docs-cpt", "Created", "Running")  # happens while it is down

    op2 = OperatorProcess(url)
    await op2.start()
    try:
        status = await wait_phase(client, kube.CPTRUNS, namespace, "docs-cpt", "Running")
        await asyncio.sleep(0.5)
        jobs = [o for (res, ns, _), o in list(emulator.objects.items())
                if res.plural in ("pytorchjobs", "jobs") and ns == namespace and not o.deleted]  # fmt: skip
        assert len([j for j in jobs if j.get("kind") == "PyTorchJob"]) == 1
        assert len([j for j in jobs if j.get("kind") == "Job"]) == 1
        creates = [c for c in op2.kube.calls if c[0] == "create" and c[1].endswith("/pytorchjobs")]
        assert creates == []
        assert status["startedAt"]
        history = emulator.objects["cpt.dev/v1alpha1/cptruns", namespace, "docs-cpt", :]
        phases = [(v.get("status") or {}).get("phase") for v in history if v is not None]
        ranks = [PHASE_ORDER.index(p) for p in phases if p in PHASE_ORDER]
        assert ranks == sorted(ranks), phases
        started = [(v.get("status") or {}).get("startedAt") for v in history if v is not None]
        first = next(i for i, s in enumerate(started) if s)
        assert all(started[first:]), "startedAt disappeared"
    finally:
        await op2.stop()


async def test_two_tenants_same_names_stay_apart(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    ns_a, ns_b = f"{namespace}-a", f"{namespace}-b"
    await apply_all(client, minimal(ns_a))
    await apply_all(client, minimal(ns_b))
    await finish_curation(client, ns_a, "docs")  # only tenant A's corpus is curated
    pj_a = await wait_object(client, kube.PYTORCHJOBS, ns_a, pytorchjob_name("docs-cpt"))
    await wait_phase(client, kube.CPTRUNS, ns_b, "docs-cpt", "WaitingForCorpus")
    assert await client.get(kube.PYTORCHJOBS, ns_b, pytorchjob_name("docs-cpt")) is None
    await finish_curation(client, ns_b, "docs")
    pj_b = await wait_object(client, kube.PYTORCHJOBS, ns_b, pytorchjob_name("docs-cpt"))
    run_a, run_b = [await client.get(kube.CPTRUNS, ns, "docs-cpt") for ns in (ns_a, ns_b)]
    assert pj_a["metadata"]["ownerReferences"][0]["uid"] == run_a["metadata"]["uid"]
    assert pj_b["metadata"]["ownerReferences"][0]["uid"] == run_b["metadata"]["uid"]
    assert pj_a["metadata"]["labels"]["cpt.dev/namespace"] == ns_a and pj_b["metadata"]["labels"]["cpt.dev/namespace"] == ns_b
    await set_job_conditions(client, ns_a, "docs-cpt", "Created", "Running")
    await wait_phase(client, kube.CPTRUNS, ns_a, "docs-cpt", "Running")
    await asyncio.sleep(0.3)
    assert (await status_of(client, kube.CPTRUNS, ns_b, "docs-cpt"))["phase"] == "Starting"


async def test_every_request_is_allowed_by_rbac(cluster: Any, client: kube.KubeClient, namespace: str) -> None:
    emulator, url = cluster
    store = RecordingCheckpointStore(client)
    op = OperatorProcess(url, store=store)
    await op.start()
    try:
        objs = example("legal-cpt", namespace)
        objs["CheckpointPolicy/legal-keep-best"]["spec"]["deleteWithRun"] = True
        await apply(client, secret(namespace))
        await apply_all(client, list(objs.values()))
        await finish_curation(client, namespace, "legal-contracts", REPORT)
        await finish_curation(client, namespace, "general-replay")
        await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
        await client.patch(kube.CPTRUNS, namespace, RUN, {"spec": {"suspend": True, "training": {"learningRate": 1e-5}}})
        await wait_phase(client, kube.CPTRUNS, namespace, RUN, "Suspended")
        await client.delete(kube.CPTRUNS, namespace, RUN)
        await eventually(lambda: _absent(client, namespace), what="the run to be deleted")
    finally:
        await op.stop()
    verbs = {"LIST": "list", "WATCH": "watch", "FETCH": "get", "CREATE": "create", "UPDATE": "patch", "DELETE": "delete"}
    seen = set()
    for request in list(emulator):
        agent = request.headers.get("User-Agent", "")
        if not (agent.startswith("kopf") or agent.startswith("cpt-operator")):
            continue  # the test's own requests (as tenant, Job controller, training operator)
        if request.resource is None or request.resource.plural is None or request.action is None:
            continue  # discovery
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        seen.add((request.resource.group, resource, verbs[request.action.name]))
    assert ("", "secrets", "get") in seen and ("kubeflow.org", "pytorchjobs", "create") in seen
    assert ("cpt.dev", "cptruns/status", "patch") in seen and ("kubeflow.org", "pytorchjobs", "delete") in seen
    assert [s for s in sorted(seen) if not rbac.allows(*s)] == []


async def _absent(client: kube.KubeClient, namespace: str) -> bool:
    return await client.get(kube.CPTRUNS, namespace, RUN) is None
