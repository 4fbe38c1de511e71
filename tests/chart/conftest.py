"""Fixtures for the chart tests: the chart rendered by the real Helm engine (helm-python-sdk,
Helm's own Go library), the rendered objects parsed, and validators for every kind rendered."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "cpt-operator"
SCHEMAS_DIR = Path(__file__).parent / "schemas"
RELEASE = "cpt"
RELEASE_NAMESPACE = "cpt-system"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion >=1.28: the CRDs use CEL
# rules with fieldPath, new in 1.28) and the newest schema
# set kubernetes-validate ships.
KUBE_VERSIONS = ("1.28.0", "1.37.0")

# The four scenarios the issue asks for: both RBAC modes, monitoring on and off.
TENANTS = ["team-a", "team-b"]
SCENARIOS: dict[str, dict[str, Any]] = {
    "cluster": {},
    "cluster+monitoring": {"monitoring": {"enabled": True}},
    "namespaces": {"rbac": {"scope": "namespaces", "watchNamespaces": TENANTS}},
    "namespaces+monitoring": {"rbac": {"scope": "namespaces", "watchNamespaces": TENANTS}, "monitoring": {"enabled": True}},
}


def load_sync_module() -> Any:
    """charts/sync.py (the command that syncs the chart's copies), imported from its path."""
    spec = importlib.util.spec_from_file_location("chart_sync", REPO / "charts" / "sync.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def chart() -> Any:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render(chart: Any) -> Render:
    """Render with `values`; returns every object of every template (NOTES.txt excluded)."""

    def _render(values: dict[str, Any] | None = None, name: str = RELEASE, namespace: str = RELEASE_NAMESPACE) -> list[dict[str, Any]]:
        manifests = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
        objects: list[dict[str, Any]] = []
        for path, text in sorted(manifests.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    objects.append(doc)
        return objects

    return _render


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
    return [
        o
        for o in objects
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (namespace is None or o["metadata"].get("namespace") == namespace)
    ]


def one(objects: list[dict[str, Any]], kind: str, **kw: Any) -> dict[str, Any]:
    found = find(objects, kind, **kw)
    assert len(found) == 1, f"expected one {kind} {kw}, found {len(found)}"
    return found[0]


# --------------------------------------------------------------------------- validation

# Kinds whose schemas kubernetes-validate does not ship, each with the schema it is checked against.
# monitoring.coreos.com: minimal structural schemas written for the fields this chart uses
# (tests/chart/schemas/), additionalProperties false where a typo would silently do nothing.
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
}


def chart_crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> openAPIV3Schema of every CRD the chart ships (kopf.dev, cpt.dev)."""
    out = {}
    for path in sorted((CHART_DIR / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                out[key] = version["schema"]["openAPIV3Schema"]
    return out


@pytest.fixture(scope="session")
def validate_object() -> Callable[[dict[str, Any]], str]:
    """Validate one object against its schema; returns which schema set was used."""
    crd_schemas = chart_crd_schemas()
    custom = {key: json.loads((SCHEMAS_DIR / name).read_text(encoding="utf-8")) for key, name in CUSTOM_SCHEMAS.items()}

    def _validate(obj: dict[str, Any]) -> str:
        key = (obj["apiVersion"], obj["kind"])
        if key in custom:
            jsonschema.validate(obj, custom[key])
            return "custom"
        if key in crd_schemas:
            jsonschema.validate(obj, crd_schemas[key])
            return "crd"
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        return "kubernetes"

    return _validate
