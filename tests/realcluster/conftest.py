"""A real control plane (tests/cluster/controlplane), started once for this session."""

from __future__ import annotations

import uuid

import pytest
import real_cluster
from kubernetes import client, config


@pytest.fixture(scope="session")
def cluster():
    c = real_cluster.start()
    yield c
    real_cluster.stop()


@pytest.fixture(scope="session")
def api_client_for(cluster):
    """api_client_for("tenant-a") -> a kubernetes ApiClient authenticated as that identity."""
    made: dict[str, client.ApiClient] = {}

    def make(identity: str) -> client.ApiClient:
        if identity not in made:
            made[identity] = config.new_client_from_config(str(cluster.kubeconfig(identity)))
        return made[identity]

    yield make
    for c in made.values():
        c.close()


@pytest.fixture(scope="session")
def admin(api_client_for):
    return api_client_for("admin")


@pytest.fixture
def namespace(admin):
    """A namespace of this test only, deleted after it."""
    core = client.CoreV1Api(admin)
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)
