"""The operator against a real control plane (tests/support/real_cluster.py): kube-apiserver
with RBAC, etcd and kube-controller-manager (garbage collector, Job controller, ...).

Once per session: our CRDs and Kopf's, the PyTorchJob CRD read from the training
operator's Go module, and the chart's RBAC as the real Helm engine renders it. Each test
gets its own namespace in which tenant-a has the built-in `edit` role (the chart's tenant
roles aggregate into it) and tenant-b nothing.
"""

from __future__ import annotations

import itertools
import logging
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))  # harness, flows

import real_cluster  # noqa: E402
from integration_setup import Identity, apply_chart_rbac, apply_crds, our_crds, prepare_tenant_namespace, upstream_crds  # noqa: E402

_ns = itertools.count()


@pytest.fixture(scope="session")
def control_plane() -> Iterator[real_cluster.Cluster]:
    c = real_cluster.start()
    yield c
    real_cluster.stop()


@pytest.fixture(scope="session")
def identities(control_plane: real_cluster.Cluster) -> dict[str, Identity]:
    return {name: Identity(control_plane.kubeconfig(name)) for name in real_cluster.IDENTITIES}


@pytest.fixture(scope="session")
def admin(identities: dict[str, Identity]) -> Identity:
    return identities["admin"]


@pytest.fixture(scope="session")
def installed(admin: Identity) -> list[dict[str, Any]]:
    """CRDs Established and the chart's RBAC (cluster scope) applied; the rendered RBAC objects."""
    apply_crds(admin, our_crds() + upstream_crds())
    return apply_chart_rbac(admin, {})


@pytest.fixture()
def namespace(request: pytest.FixtureRequest, identities: dict[str, Identity], admin: Identity, installed: Any) -> str:
    """A namespace of this test only, with tenant-a bound to `edit` and opted in as a tenant
    namespace (the operator may reach its data: the chart's RoleBinding)."""
    base = request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[:40].strip("-")
    name = f"{base}-{next(_ns)}"
    prepare_tenant_namespace(identities, admin, name)
    return name


class KopfErrors(logging.Handler):
    """Kopf's own requests do not go through our client: its warnings and errors are read here."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@pytest.fixture()
def kopf_errors() -> Iterator[KopfErrors]:
    handler = KopfErrors()
    logger = logging.getLogger("kopf")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
