"""Constants and helpers of the chart tests, in a module of its own name: test modules import
them from here, never from `conftest` (with several test folders on the command line, a
`conftest` of another folder can be the one Python finds under that name)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "cpt-operator"
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
    "cluster+tenants": {"rbac": {"tenantNamespaces": TENANTS}},
    "cluster+all-namespaces": {"rbac": {"tenantNamespaces": ["*"]}},
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
