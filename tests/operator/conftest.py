"""Fixtures of the operator tests: the emulated API server over HTTP on 127.0.0.1 and a
client to it; the operator itself is started by each integration test (it restarts some)."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import kmock
import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).parent))

from harness import ClusterEmulator, declare_resources, load_crds  # noqa: E402

from cpt_operator.kube import ClusterConnection, KubeClient  # noqa: E402

_ns_counter = itertools.count()


@pytest.fixture(scope="session")
def crds() -> list[dict[str, Any]]:
    return load_crds()


@pytest_asyncio.fixture()
async def cluster(crds: list[dict[str, Any]]) -> AsyncIterator[tuple[ClusterEmulator, str]]:
    """(emulator, url) of a fresh emulated API server."""
    async with ClusterEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        declare_resources(emulator, crds)
        yield emulator, str(server.url).rstrip("/")


@pytest_asyncio.fixture()
async def client(cluster: tuple[ClusterEmulator, str]) -> AsyncIterator[KubeClient]:
    """A plain client to the emulated server (the test acting as tenant or as the training operator)."""
    c = KubeClient(ClusterConnection(server=cluster[1]), user_agent="test-tenant")
    yield c
    await c.close()


@pytest.fixture()
def namespace(request: pytest.FixtureRequest) -> str:
    """A namespace of this test only."""
    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    return f"{base}-{next(_ns_counter)}"
