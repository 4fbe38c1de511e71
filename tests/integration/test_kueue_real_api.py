"""Kueue and the training operator, for real, with the operator on the real control plane.

Kueue v0.17.0's manager (with its webhooks) admits the run's PyTorchJob and un-suspends it;
the training operator v1.8.1 creates its Master pod. A stop must stick: Kueue un-suspends an
admitted job whatever sets `runPolicy.suspend`, so the operator deactivates the Workload and
Kueue evicts it, suspends the job and releases the ClusterQueue's quota. A namespace
LocalQueue named `default` makes Kueue's webhook label and suspend a job whose run names no
queue; the operator must not un-suspend it. There is no kubelet: pods stay Pending.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
import real_cluster
from safetensors.torch import load_file
import tiny_training
from launching import complete_checkpoints, kill_tree
import torch
from flows import apply_all, condition, wait_phase
from harness import OperatorProcess, eventually
from integration_flows import LONG, play_kubelet, record_answers, refused, refused_logs
from integration_setup import Identity
from manifests import example

from cpt_operator import kube
from cpt_operator.render.names import pytorchjob_name

pytestmark = pytest.mark.timeout(600)
KV = "kueue.x-k8s.io/v1beta2"
WORKLOADS = kube.Resource("kueue.x-k8s.io", "v1beta2", "workloads")
CLUSTER_QUEUES = kube.Resource("kueue.x-k8s.io", "v1beta2", "clusterqueues")
RUN = "docs-cpt"


@pytest.fixture(scope="module")
def addons(installed: Any, admin: Identity) -> Iterator[None]:
    """Kueue and the training operator running, with one ResourceFlavor."""
    real_cluster.start_kueue()
    real_cluster.start_training_operator()
    admin._plurals.clear()
    admin.apply({"apiVersion": KV, "kind": "ResourceFlavor", "metadata": {"name": "h100-80gb"}, "spec": {}})
    yield
    real_cluster.stop_addons()


@pytest.fixture()
def kueue(addons: None, admin: Identity, namespace: str) -> str:
    """A ClusterQueue of this test's namespace only, with room for exactly one run of the minimal
    example (one node: 8 GPUs, 32 CPUs, 256Gi) and for its curation pod (2 CPUs, 8Gi)."""
    name = f"cq-{namespace}"[:63]
    admin.apply({
        "apiVersion": KV, "kind": "ClusterQueue", "metadata": {"name": name},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}, "resourceGroups": [{
            "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
            "flavors": [{"name": "h100-80gb", "resources": [
                {"name": "cpu", "nominalQuota": "34"}, {"name": "memory", "nominalQuota": "264Gi"},
                {"name": "nvidia.com/gpu", "nominalQuota": "8"}]}]}]},
    })  # fmt: skip
    return name


def local_queue(admin: Identity, namespace: str, name: str, cluster_queue: str) -> None:
    admin.apply({"apiVersion": KV, "kind": "LocalQueue", "metadata": {"name": name, "namespace": namespace},
                 "spec": {"clusterQueue": cluster_queue}})  # fmt: skip


async def start(tenant: kube.KubeClient, admin: kube.KubeClient, namespace: str, **resources: Any) -> None:
    objs = example("minimal", namespace)
    objs[f"CPTRun/{RUN}"]["spec"]["resources"].update(resources)
    await apply_all(tenant, list(objs.values()))  # as the tenant applies them
    await play_kubelet(admin, namespace, "docs", {"documents": 10})


async def workload_of(admin: kube.KubeClient, namespace: str) -> dict[str, Any] | None:
    job = await admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
    if job is None:
        return None
    found = await admin.list(WORKLOADS, namespace, {"kueue.x-k8s.io/job-uid": job["metadata"]["uid"]})
    return found[0] if found else None


def true(obj: dict[str, Any] | None, type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in ((obj or {}).get("status") or {}).get("conditions") or [])


async def admitted_count(admin: kube.KubeClient, cluster_queue: str) -> int:
    cq = await admin.get(CLUSTER_QUEUES, "", cluster_queue)
    return int(((cq or {}).get("status") or {}).get("admittedWorkloads") or 0)


async def job_suspend(admin: kube.KubeClient, namespace: str) -> bool | None:
    job = await admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
    return None if job is None else bool(job["spec"]["runPolicy"].get("suspend"))


async def test_a_queued_run_is_admitted_and_a_stop_sticks_and_releases_quota(
    identities: dict[str, Identity], namespace: str, kueue: str, admin: Identity, kopf_errors: Any
) -> None:
    local_queue(admin, namespace, "team-q", kueue)
    op = OperatorProcess(connection=identities["operator"].connection())
    answers = record_answers(op)
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    adm = kube.KubeClient(admin.connection(), user_agent="test-admin")
    await op.start(timeout=LONG)
    try:
        await start(tenant, adm, namespace, queueName="team-q")
        # Kueue admits the Workload and un-suspends the job; the training operator creates its pod.
        wl = await eventually(lambda: _admitted(adm, namespace), timeout=LONG, what="Workload admitted")
        await eventually(lambda: _is(job_suspend(adm, namespace), False), timeout=LONG, what="job un-suspended by Kueue")
        await eventually(lambda: adm.get(kube.PODS, namespace, f"{pytorchjob_name(RUN)}-master-0"), timeout=LONG,
                         what="the Master pod created by the training operator")  # fmt: skip
        await eventually(lambda: _is_n(admitted_count(adm, kueue), 1), timeout=LONG, what="one workload admitted in the ClusterQueue")

        # The tenant suspends (as `kubectl patch` or the Argo CD halt action does).
        await tenant.patch(kube.CPTRUNS, namespace, RUN, {"spec": {"suspend": True}})

        async def stopped() -> Any:
            wl = await workload_of(adm, namespace)
            if wl is None or (wl.get("spec") or {}).get("active") is not False:
                return None
            if await job_suspend(adm, namespace) is not True or await admitted_count(adm, kueue) != 0:
                return None
            return wl

        wl = await eventually(stopped, timeout=LONG, what="Workload inactive, job suspended, quota released")
        assert true(wl, "Evicted"), wl.get("status")
        status = await wait_phase(tenant, kube.CPTRUNS, namespace, RUN, "Suspended", timeout=LONG)
        assert condition(status, "Suspended")["reason"] == "SuspendedByTenant"
        # It sticks: Kueue has nothing to re-admit, and the pods are gone.
        await eventually(lambda: _no_pods(adm, namespace), timeout=LONG, what="the training operator deleted the pods")
        assert await job_suspend(adm, namespace) is True and await admitted_count(adm, kueue) == 0

        # Resume: the Workload goes back to the queue and Kueue admits it again.
        await tenant.patch(kube.CPTRUNS, namespace, RUN, {"spec": {"suspend": False}})
        await eventually(lambda: _admitted(adm, namespace, active=True), timeout=LONG, what="Workload re-admitted")
        await eventually(lambda: _is(job_suspend(adm, namespace), False), timeout=LONG, what="job un-suspended again")

        # Deleted: the garbage collector takes the job, and its Workload with it.
        await tenant.delete(kube.CPTRUNS, namespace, RUN)
        await eventually(lambda: _none_left(adm, namespace), timeout=LONG, what="the Workload deleted with the run")
    finally:
        await op.stop()
        await tenant.close()
        await adm.close()
    job_path = kube.PYTORCHJOBS.path(namespace, pytorchjob_name(RUN))
    assert not [a for a in answers if a[0] == "patch" and a[1] == job_path], "the operator wrote runPolicy of a job Kueue manages"
    assert not refused(answers, namespace), refused(answers, namespace)
    assert not refused_logs(kopf_errors.records, namespace)


async def test_a_default_local_queue_causes_no_unsuspend_loop(
    identities: dict[str, Identity], namespace: str, kueue: str, admin: Identity
) -> None:
    local_queue(admin, namespace, "default", kueue)
    op = OperatorProcess(connection=identities["operator"].connection())
    answers = record_answers(op)
    adm = kube.KubeClient(admin.connection(), user_agent="test-admin")
    await op.start(timeout=LONG)
    try:
        # No queueName in the run. Kueue's webhook queues the curation Job too (batch/job is
        # enabled): the quota has room for it.
        await start(adm, adm, namespace)
        job = await eventually(lambda: adm.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)), timeout=LONG, what="PyTorchJob")
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "default"  # Kueue's webhook
        await eventually(lambda: _admitted(adm, namespace), timeout=LONG, what="Workload admitted from the default queue")
        await eventually(lambda: _is(job_suspend(adm, namespace), False), timeout=LONG, what="job un-suspended by Kueue")
        status = await wait_phase(adm, kube.CPTRUNS, namespace, RUN, "Starting", timeout=LONG)
        assert condition(status, "Suspended")["status"] == "False"
    finally:
        await op.stop()
        await adm.close()
    job_path = kube.PYTORCHJOBS.path(namespace, pytorchjob_name(RUN))
    assert not [a for a in answers if a[0] == "patch" and a[1] == job_path], "the operator un-suspended a job Kueue manages"


async def _admitted(adm: kube.KubeClient, namespace: str, active: bool | None = None) -> dict[str, Any] | None:
    wl = await workload_of(adm, namespace)
    if not true(wl, "Admitted"):
        return None
    if active is not None and (wl.get("spec") or {}).get("active", True) is not active:
        return None
    return wl


async def _is_n(value: Any, expected: int) -> bool:
    return (await value) == expected


async def _is(value: Any, expected: Any) -> bool:
    return (await value) is expected


async def _none_left(adm: kube.KubeClient, namespace: str) -> bool:
    return await adm.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)) is None and not await adm.list(WORKLOADS, namespace)


async def _no_pods(adm: kube.KubeClient, namespace: str) -> bool:
    return not [p for p in await adm.list(kube.PODS, namespace) if p["metadata"]["name"].startswith(pytorchjob_name(RUN))]


# ------------------------------------------------------------------ preemption with a real trainer

HIGH = "cpt-test-high"


async def test_a_kueue_preemption_saves_a_checkpoint_and_the_readmitted_run_resumes_exactly(
    identities: dict[str, Identity], namespace: str, addons: None, admin: Identity, tmp_path: Path
) -> None:
    """Kueue preempts the running run for a higher-priority job: it evicts the Workload and
    suspends the PyTorchJob, and the training operator deletes the Master pod. The test plays the
    kubelet: it runs the pod's own container command (`cpt-trainer launch`) as a real trainer
    process, SIGTERMs it when its pod is deleted, and runs it again for the pod the training
    operator creates after readmission. The trainer saves at the current step on SIGTERM and the
    second container resumes there, ending with the weights of an uninterrupted run."""
    inputs = tiny_training.build_inputs(tmp_path / "inputs")
    total, interval = 120, 5
    ref_ck, ck = tmp_path / "ck-ref", tmp_path / "ck"
    ref_config = tiny_training.write_config(tmp_path / "ref.json", inputs, ref_ck, total, interval)
    config = tiny_training.write_config(tmp_path / "run.json", inputs, ck, total, interval)

    cq = f"cq-pre-{namespace}"[:63]
    admin.apply({"apiVersion": KV, "kind": "WorkloadPriorityClass", "metadata": {"name": HIGH}, "value": 1000,
                 "description": "a job that preempts the runs of its ClusterQueue"})  # fmt: skip
    admin.apply({
        "apiVersion": KV, "kind": "ClusterQueue", "metadata": {"name": cq},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                 "preemption": {"withinClusterQueue": "LowerPriority"},
                 "resourceGroups": [{"coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                                     "flavors": [{"name": "h100-80gb", "resources": [
                                         {"name": "cpu", "nominalQuota": "34"}, {"name": "memory", "nominalQuota": "264Gi"},
                                         {"name": "nvidia.com/gpu", "nominalQuota": "8"}]}]}]},
    })  # fmt: skip
    local_queue(admin, namespace, "team-q", cq)
    op = OperatorProcess(connection=identities["operator"].connection())
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    adm = kube.KubeClient(admin.connection(), user_agent="test-admin")
    procs: list[subprocess.Popen] = []
    await op.start(timeout=LONG)
    try:
        # The uninterrupted run, for the weights (the same container command, no cluster needed).
        await start(tenant, adm, namespace, queueName="team-q")
        pod = await eventually(lambda: _master_pod(adm, namespace), timeout=LONG, what="the Master pod")
        command = pod["spec"]["containers"][0]["command"]
        ref = tiny_training.start_container(command, ref_config, tmp_path / "cache-ref", tmp_path / "ref.log")
        procs.append(ref)
        assert await _exited(ref) == 0, _log(tmp_path / "ref.log")

        # The queued run's container starts; the kubelet reports it running.
        first = tiny_training.start_container(command, config, tmp_path / "cache", tmp_path / "first.log")
        procs.append(first)
        await _report_running(adm, namespace, pod)
        await eventually(lambda: _is(job_suspend(adm, namespace), False), timeout=LONG, what="job running (admitted)")
        await eventually(lambda: _has_checkpoint(ck, first), timeout=LONG, what="the first checkpoint")
        # Freeze the container (a slow node) so the preemption lands mid-run whatever the load.
        frozen = [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]
        for p in frozen:
            p.suspend()

        # A higher-priority job needs the whole ClusterQueue: Kueue preempts the run.
        await adm.create(kube.JOBS, namespace, _high_priority_job())
        wl = await eventually(lambda: _evicted(adm, namespace), timeout=LONG, what="the run's Workload evicted")
        await eventually(lambda: _is(job_suspend(adm, namespace), True), timeout=LONG, what="job suspended by Kueue")
        await eventually(lambda: _gone(adm, namespace, pod["metadata"]["uid"]), timeout=LONG,
                         what="the Master pod deleted by the training operator")  # fmt: skip
        status = await wait_phase(tenant, kube.CPTRUNS, namespace, RUN, "Pending", timeout=LONG)
        assert condition(status, "Suspended")["reason"] == "WaitingForQueueAdmission", status

        # The kubelet stops the deleted pod's container: SIGTERM to PID 1 (the launcher).
        for p in frozen:
            p.resume()
        first.send_signal(signal.SIGTERM)
        assert await _exited(first) == 128 + signal.SIGTERM, _log(tmp_path / "first.log")
        stopped = int(re.search(r"stopped at step (\d+) on request", (tmp_path / "first.log").read_text(errors="replace")).group(1))
        assert stopped < total, "the run ended before the preemption: nothing was interrupted"
        assert complete_checkpoints(ck)[-1] == f"step-{stopped:08d}", complete_checkpoints(ck)

        # The higher-priority job ends: Kueue admits the run again, the training operator makes a new pod.
        await adm.delete(kube.JOBS, namespace, "urgent")
        await eventually(lambda: _admitted(adm, namespace), timeout=LONG, what="the run's Workload readmitted")
        again = await eventually(lambda: _master_pod(adm, namespace, not_uid=pod["metadata"]["uid"]), timeout=LONG,
                                 what="a new Master pod after readmission")  # fmt: skip
        second = tiny_training.start_container(again["spec"]["containers"][0]["command"], config, tmp_path / "cache",
                                               tmp_path / "second.log")  # fmt: skip
        procs.append(second)
        await _report_running(adm, namespace, again)
        assert await _exited(second) == 0, _log(tmp_path / "second.log")
        assert f"resuming from checkpoint step-{stopped:08d}" in (tmp_path / "second.log").read_text(errors="replace")
        assert true(wl, "Evicted"), wl.get("status")
    finally:
        for p in procs:
            kill_tree(p)
        await op.stop()
        await tenant.close()
        await adm.close()
        admin.delete(KV, "ClusterQueue", cq)
    a = load_file(str(ref_ck / f"step-{total:08d}" / "model" / "model.safetensors"))
    b = load_file(str(ck / f"step-{total:08d}" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:  # same data position, RNG and schedule after the resume: bit-identical on one rank
        assert torch.equal(a[key], b[key]), key


def _high_priority_job() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "urgent", "labels": {"kueue.x-k8s.io/queue-name": "team-q",
                                                  "kueue.x-k8s.io/priority-class": HIGH}},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "registry.invalid/urgent:1", "command": ["true"],
            "resources": {"requests": {"cpu": "1", "nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}}}]}}},
    }  # fmt: skip


async def _master_pod(adm: kube.KubeClient, namespace: str, not_uid: str = "") -> dict[str, Any] | None:
    pod = await adm.get(kube.PODS, namespace, f"{pytorchjob_name(RUN)}-master-0")
    if pod is None or pod["metadata"]["uid"] == not_uid or pod["metadata"].get("deletionTimestamp"):
        return None
    return pod


async def _gone(adm: kube.KubeClient, namespace: str, uid: str) -> bool:
    pod = await adm.get(kube.PODS, namespace, f"{pytorchjob_name(RUN)}-master-0")
    return pod is None or pod["metadata"]["uid"] != uid or bool(pod["metadata"].get("deletionTimestamp"))


async def _evicted(adm: kube.KubeClient, namespace: str) -> dict[str, Any] | None:
    wl = await workload_of(adm, namespace)
    return wl if true(wl, "Evicted") else None


async def _report_running(adm: kube.KubeClient, namespace: str, pod: dict[str, Any]) -> None:
    container = pod["spec"]["containers"][0]
    now = "2026-01-01T00:00:00Z"
    status = {"phase": "Running", "containerStatuses": [{
        "name": container["name"], "image": container["image"], "imageID": "", "ready": True, "restartCount": 0,
        "started": True, "state": {"running": {"startedAt": now}}}]}  # fmt: skip
    await adm.patch_status(kube.PODS, namespace, pod["metadata"]["name"], {"status": status})


async def _has_checkpoint(ck: Path, proc: subprocess.Popen) -> bool:
    assert proc.poll() is None, f"the trainer exited {proc.returncode} before its first checkpoint"
    return bool(complete_checkpoints(ck))


async def _exited(proc: subprocess.Popen, timeout: float = 300) -> int:
    return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)


def _log(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:]
