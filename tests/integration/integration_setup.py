"""Setting up the real control plane (tests/support/real_cluster.py) for the operator's
integration tests: one client per identity, server-side apply, the CRDs (ours, Kopf's, and
the upstream ones read from the Go module cache), and the chart's RBAC as the real Helm
engine renders it.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any, Iterable

import helm_python as helm
import requests
import yaml

from cpt_operator.kube import ClusterConnection

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "charts" / "cpt-operator"
RELEASE, RELEASE_NAMESPACE = "cpt-operator", "cpt-system"  # the operator identity's ServiceAccount
FIELD_MANAGER = "cpt-tests"
# Upstream CRDs, read from the Go module cache (never copied into this repository): the
# training operator's module as tests/cluster/training-operator pins it.
PYTORCHJOB_CRD = "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"


class Forbidden(AssertionError):
    pass


def plural_path(api_version: str, plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base] + ([f"namespaces/{namespace}"] if namespace else []) + [plural] + ([name] if name else []) + ([sub] if sub else [])
    return "/".join(parts)


class Identity:
    """A plain HTTP client authenticated as one of the control plane's identities."""

    def __init__(self, kubeconfig: Path):
        cfg = yaml.safe_load(kubeconfig.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        self.server = cluster["server"]
        self.token = cfg["users"][0]["user"]["token"]
        self.ca_path = kubeconfig.parent / f"{kubeconfig.stem}.ca.crt"
        self.ca_path.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {self.token}"
        self.session.trust_env = False  # loopback only: no proxies, no CA bundle from the environment
        self._plurals: dict[tuple[str, str], tuple[str, bool]] = {}

    def connection(self) -> ClusterConnection:
        return ClusterConnection(server=self.server, token=self.token, ca_path=str(self.ca_path))

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json",
                params: dict[str, str] | None = None) -> requests.Response:  # fmt: skip
        data = None if body is None else (body if isinstance(body, (str, bytes)) else json.dumps(body))
        # verify per request: a session's own is overridden by REQUESTS_CA_BUNDLE when set.
        return self.session.request(method, self.server + path, data=data, params=params, verify=str(self.ca_path),
                                    headers={"Content-Type": content_type}, timeout=60)  # fmt: skip

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from the server's discovery."""
        key = (api_version, kind)
        if key not in self._plurals:
            path = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            for r in self.request("GET", path).json().get("resources", []):
                if "/" not in r["name"]:
                    self._plurals[(api_version, r["kind"])] = (r["name"], r["namespaced"])
        if key not in self._plurals:
            raise KeyError(f"the server serves no {kind} in {api_version}")
        return self._plurals[key]

    def path_of(self, obj: dict[str, Any], namespace: str | None = None, with_name: bool = True) -> str:
        plural, namespaced = self.resource(obj["apiVersion"], obj["kind"])
        ns = (namespace or obj["metadata"].get("namespace")) if namespaced else None
        return plural_path(obj["apiVersion"], plural, ns, obj["metadata"]["name"] if with_name else None)

    def apply(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Server-side apply; raises with the server's message when it refuses."""
        resp = self.request("PATCH", self.path_of(obj, namespace), obj, "application/apply-patch+yaml",
                            params={"fieldManager": FIELD_MANAGER, "force": "true"})  # fmt: skip
        if resp.status_code == 403:
            raise Forbidden(resp.json().get("message"))
        if resp.status_code >= 300:
            raise AssertionError(f"apply of {obj['kind']}/{obj['metadata']['name']} refused ({resp.status_code}): {resp.text[:2000]}")
        return resp.json()

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        plural, namespaced = self.resource(api_version, kind)
        resp = self.request("GET", plural_path(api_version, plural, namespace if namespaced else None, name))
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> int:
        plural, namespaced = self.resource(api_version, kind)
        return self.request("DELETE", plural_path(api_version, plural, namespace if namespaced else None, name)).status_code


def wait_for(check, timeout: float = 120, interval: float = 0.2, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


def upstream_crds() -> list[dict[str, Any]]:
    import real_cluster

    folder = real_cluster.module_dir("training-operator", real_cluster.TRAINING_OPERATOR_MODULE)
    return [yaml.safe_load((folder / PYTORCHJOB_CRD).read_text())]


def our_crds() -> list[dict[str, Any]]:
    files = sorted((ROOT / "crds").glob("*.yaml")) + [CHART_DIR / "crds" / "kopf.dev_peerings.yaml"]
    return [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def apply_crds(admin: Identity, crds: Iterable[dict[str, Any]]) -> None:
    crds = list(crds)
    for crd in crds:
        admin.apply(crd)

    def established() -> bool:
        for crd in crds:
            got = admin.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", crd["metadata"]["name"]) or {}
            conds = {c["type"]: c["status"] for c in (got.get("status") or {}).get("conditions") or []}
            if conds.get("Established") != "True":
                return False
        return True

    wait_for(established, what="CRDs Established")
    admin._plurals.clear()


def render_chart(values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=RELEASE_NAMESPACE, is_install=True)
    return [d for path, text in sorted(manifests.items()) if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def apply_chart_rbac(admin: Identity, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's ServiceAccount and RBAC objects, rendered by the real Helm engine, applied."""
    objects = [o for o in render_chart(values) if o["kind"] in RBAC_KINDS]
    namespaces = {RELEASE_NAMESPACE} | {o["metadata"]["namespace"] for o in objects if o["metadata"].get("namespace")}
    for ns in sorted(namespaces):
        admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for obj in objects:
        admin.apply(obj, namespace=obj["metadata"].get("namespace") or RELEASE_NAMESPACE)
    return objects


def opt_in_namespace(admin: Identity, namespace: str) -> list[dict[str, Any]]:
    """What the platform does for a tenant namespace under the default (cluster-scope) install:
    `rbac.tenantNamespaces` names it, and the chart's RoleBinding there lets the operator reach
    its data. Rendered by the real Helm engine; only that namespace's objects are applied."""
    objects = [o for o in render_chart({"rbac": {"tenantNamespaces": [namespace]}})
               if o["kind"] in RBAC_KINDS and o["metadata"].get("namespace") == namespace]  # fmt: skip
    assert [o["kind"] for o in objects] == ["RoleBinding"], objects
    for obj in objects:
        admin.apply(obj, namespace=namespace)
    return objects


def prepare_tenant_namespace(identities: dict[str, Identity], admin: Identity, name: str) -> None:
    """A tenant namespace as the platform sets one up: created, tenant-a bound to `edit`, opted
    in for the operator (the chart's RoleBinding); returns once the authorizer, which reads
    RoleBindings (and the roles aggregated into `edit`) from its own cache, grants both."""
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    admin.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "tenant-a-edit", "namespace": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant-a"}],
    })  # fmt: skip
    opt_in_namespace(admin, name)
    wait_allowed(identities["tenant-a"], name, [("cpt.dev", "cptruns"), ("cpt.dev", "corpora"), ("", "configmaps"), ("", "secrets")])
    wait_allowed(identities["operator"], name, [("", "configmaps"), ("kubeflow.org", "pytorchjobs"), ("batch", "jobs")])


def wait_allowed(identity: Identity, namespace: str, resources: list[tuple[str, str]], timeout: float = 120) -> None:
    """Until a SelfSubjectAccessReview says `identity` may create each (group, resource) there."""
    deadline = time.monotonic() + timeout
    pending = list(resources)
    while pending:
        group, resource = pending[0]
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": {
            "namespace": namespace, "verb": "create", "group": group, "resource": resource}}}  # fmt: skip
        resp = identity.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
        if resp.status_code == 201 and resp.json().get("status", {}).get("allowed"):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise AssertionError(f"the identity may still not create {resource} in {namespace} after {timeout} s: {resp.text}")
        time.sleep(0.2)
