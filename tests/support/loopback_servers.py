"""Real servers on loopback for the tests: moto's S3 server and Debian's Prometheus (shared by the test tiers through `pythonpath`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch, request):
    """A boto3 S3 client on the local server, with a fresh bucket per test."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = "b-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    bucket = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in bucket)
    client.create_bucket(Bucket=bucket)
    client.bucket = bucket  # type: ignore[attr-defined]
    return client


class PrometheusServer:
    """Debian's prometheus binary on 127.0.0.1, scraping the given targets every second."""

    def __init__(self, workdir: Path, targets: list[str], scrape_interval: str = "1s"):
        self.workdir = workdir
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = targets
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("the prometheus binary is missing: apt-get install -y prometheus (make test does)")
        config = self.workdir / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {self.scrape_interval}\n  evaluation_interval: {self.scrape_interval}\n"
            "scrape_configs:\n  - job_name: trainer\n    honor_labels: true\n    static_configs:\n"
            f"      - targets: {self.targets!r}\n"
        )
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "prometheus.log", "w"),
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("prometheus did not become ready: " + (self.workdir / "prometheus.log").read_text()[-2000:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture
def prometheus_factory(tmp_path):
    servers: list[PrometheusServer] = []

    def make(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prom{len(servers)}", targets)
        server.workdir.mkdir()
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
