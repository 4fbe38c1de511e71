"""Fixtures for the chart tests: the chart rendered by the real Helm engine (helm-python-sdk,
Helm's own Go library), the rendered objects parsed, and validators for every kind rendered."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chart_support import CHART_DIR, KUBE_VERSIONS, RELEASE, RELEASE_NAMESPACE, REPO, find, one  # noqa: F401

SCHEMAS_DIR = Path(__file__).parent / "schemas"


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
