"""The real control plane answers, enforces RBAC, accepts our CRDs and runs its controllers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from realcluster_support import eventually
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml"))






def test_admin_reaches_the_api_server(admin):
    assert client.VersionApi(admin).get_code().major == "1"
    names = {n.metadata.name for n in client.CoreV1Api(admin).list_namespace().items}
    assert {"default", "kube-system"} <= names


@pytest.mark.parametrize("identity", ["tenant-a", "tenant-b", "operator"])
def test_identities_without_roles_are_forbidden(api_client_for, identity, namespace):
    """Nobody but admin may list Secrets (not even the operator, whose chart RBAC other test
    folders may have applied by now: it only ever `get`s one by name); tenants may not list
    namespaces."""
    core = client.CoreV1Api(api_client_for(identity))
    if identity != "operator":
        with pytest.raises(ApiException) as e:
            core.list_namespace()
        assert e.value.status == 403
    with pytest.raises(ApiException) as e:
        core.list_namespaced_secret(namespace)
    assert e.value.status == 403


def test_identities_are_distinct(api_client_for):
    expected = {
        "admin": "admin",
        "operator": "system:serviceaccount:cpt-system:cpt-operator",
        "tenant-a": "tenant-a",
        "tenant-b": "tenant-b",
    }
    for identity, user in expected.items():
        review = client.AuthenticationV1Api(api_client_for(identity)).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        assert review.status.user_info.username == user
    groups = client.AuthenticationV1Api(api_client_for("operator")).create_self_subject_review(
        client.V1SelfSubjectReview()
    ).status.user_info.groups
    assert {"system:serviceaccounts", "system:serviceaccounts:cpt-system"} <= set(groups)


def test_a_role_grants_tenant_a_its_namespace_only(admin, api_client_for, namespace):
    rbac = client.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "secrets-reader"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
    })  # fmt: skip
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "tenant-a-secrets"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secrets-reader"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant-a"}],
    })  # fmt: skip
    eventually(lambda: client.CoreV1Api(api_client_for("tenant-a")).list_namespaced_secret(namespace) is not None,
               timeout=20, what="tenant-a may list secrets")  # fmt: skip
    for other, ns in (("tenant-b", namespace), ("tenant-a", "default")):
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(api_client_for(other)).list_namespaced_secret(ns)
        assert e.value.status == 403, (other, ns)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_accepted_and_established(admin, path):
    crd = yaml.safe_load(path.read_text())
    name = crd["metadata"]["name"]
    crds = DynamicClient(admin).resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")
    try:
        crds.server_side_apply(body=crd, name=name, field_manager="cpt-tests", force_conflicts=True)
    except ApiException as e:
        pytest.fail(f"the API server rejected {path.name} ({e.status}): {e.body}")

    def established():
        got = crds.get(name=name)
        return any(c["type"] == "Established" and c["status"] == "True" for c in got.status.conditions or [])

    eventually(established, timeout=60, what=f"{name} Established")


def test_garbage_collector_deletes_dependents(admin, namespace):
    core = client.CoreV1Api(admin)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "dependent", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]},
    })  # fmt: skip
    core.delete_namespaced_config_map("owner", namespace)

    def dependent_gone():
        try:
            core.read_namespaced_config_map("dependent", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    eventually(dependent_gone, timeout=90, what="dependent ConfigMap deleted by the garbage collector")


def test_job_controller_creates_a_pod(admin, namespace):
    client.BatchV1Api(admin).create_namespaced_job(namespace, {
        "metadata": {"name": "hello"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]}}},
    })  # fmt: skip
    core = client.CoreV1Api(admin)
    pods = eventually(lambda: core.list_namespaced_pod(namespace, label_selector="job-name=hello").items,
                      timeout=90, what="a Pod of Job hello")  # fmt: skip
    assert pods[0].metadata.owner_references[0].kind == "Job"
    # The ServiceAccount admission plugin ran: the default ServiceAccount was made by its controller.
    assert pods[0].spec.service_account_name == "default"


def test_namespace_deletion_completes(admin):
    core = client.CoreV1Api(admin)
    name = f"gone-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, {"metadata": {"name": "x"}})
    core.delete_namespace(name)

    def gone():
        try:
            core.read_namespace(name)
        except ApiException as e:
            return e.status == 404
        return False

    eventually(gone, timeout=90, what=f"namespace {name} finalized by the namespace controller")
