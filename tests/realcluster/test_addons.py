"""Kueue (manager, CRDs, webhooks) and the training operator's PyTorchJob controller, from
their upstream Go modules, on the real control plane."""

from __future__ import annotations


import pytest
import real_cluster
from realcluster_support import eventually
from kubernetes import client
from kubernetes.dynamic import DynamicClient




@pytest.fixture(scope="module")
def addons(cluster):
    real_cluster.start_kueue()
    real_cluster.start_training_operator()
    yield
    real_cluster.stop_addons()




def _res(admin, api_version, kind):
    return DynamicClient(admin).resources.get(api_version=api_version, kind=kind)


def test_kueue_admits_a_queued_job(addons, admin, namespace):
    kv = "kueue.x-k8s.io/v1beta2"
    _res(admin, kv, "ResourceFlavor").server_side_apply(
        body={"apiVersion": kv, "kind": "ResourceFlavor", "metadata": {"name": "default"}, "spec": {}},
        name="default", field_manager="cpt-tests")  # fmt: skip
    _res(admin, kv, "ClusterQueue").server_side_apply(body={
        "apiVersion": kv, "kind": "ClusterQueue", "metadata": {"name": "cq"},
        "spec": {"namespaceSelector": {}, "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [
            {"name": "default", "resources": [{"name": "cpu", "nominalQuota": "4"}]}]}]},
    }, name="cq", field_manager="cpt-tests")  # fmt: skip
    _res(admin, kv, "LocalQueue").create(namespace=namespace, body={
        "apiVersion": kv, "kind": "LocalQueue", "metadata": {"name": "lq"}, "spec": {"clusterQueue": "cq"}})  # fmt: skip
    batch = client.BatchV1Api(admin)
    batch.create_namespaced_job(namespace, {
        "metadata": {"name": "queued", "labels": {"kueue.x-k8s.io/queue-name": "lq"}},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": "busybox", "resources": {"requests": {"cpu": "1"}}}]}}},
    })  # fmt: skip
    # Kueue's mutating webhook (on 127.0.0.1) suspends it at creation, or, if the API server has
    # not yet picked up the webhook configuration Kueue just registered, Kueue's job reconciler
    # suspends it on sight; either way the manager admits its Workload and lets it run.
    def admitted():
        wls = _res(admin, kv, "Workload").get(namespace=namespace).items
        return wls and any(c["type"] == "Admitted" and c["status"] == "True" for c in (wls[0].status or {}).get("conditions") or [])

    eventually(admitted, what="the Job's Workload admitted by Kueue")
    eventually(lambda: batch.read_namespaced_job("queued", namespace).spec.suspend is False,
               what="Job unsuspended by Kueue")  # fmt: skip


def test_pytorchjob_controller_creates_pods(addons, admin, namespace):
    pj = _res(admin, "kubeflow.org/v1", "PyTorchJob")
    template = {"spec": {"containers": [{"name": "pytorch", "image": "pytorch", "command": ["true"]}]}}
    pj.create(namespace=namespace, body={
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "pt"},
        "spec": {"pytorchReplicaSpecs": {
            "Master": {"replicas": 1, "restartPolicy": "Never", "template": template},
            "Worker": {"replicas": 1, "restartPolicy": "Never", "template": template}}},
    })  # fmt: skip
    core = client.CoreV1Api(admin)
    pods = eventually(lambda: len(core.list_namespaced_pod(namespace).items) >= 2 and core.list_namespaced_pod(namespace).items,
                      what="PyTorchJob pods")  # fmt: skip
    assert {p.metadata.name for p in pods} == {"pt-master-0", "pt-worker-0"}
