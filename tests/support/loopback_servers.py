"""Real servers on loopback for the tests: moto's S3 server and Debian's Prometheus (shared by the test tiers through `pythonpath`)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


# The chart's PodMonitor (charts/cpt-operator/templates/podmonitor.yaml), as the test Prometheus
# applies it: honorLabels false and these relabelings, in the PodMonitor's own (camelCase) form.
# tests/chart/test_chart_metrics_identity.py asserts the rendered chart says exactly this, so the
# two cannot drift apart. Prometheus-operator turns each into a relabel_config the same way
# (`relabel_config`); the pod's service-discovery labels come from `PodTarget`.
PODMONITOR_HONOR_LABELS = False
PODMONITOR_RELABELINGS: list[dict[str, Any]] = [
    {"sourceLabels": ["__meta_kubernetes_pod_label_cpt_dev_run", "__meta_kubernetes_pod_label_cpt_dev_run_uid"],
     "regex": ".+;.+", "action": "keep"},
    {"sourceLabels": ["__meta_kubernetes_namespace"], "targetLabel": "namespace", "action": "replace"},
    {"sourceLabels": ["__meta_kubernetes_pod_label_cpt_dev_run"], "targetLabel": "run", "action": "replace"},
    {"sourceLabels": ["__meta_kubernetes_pod_label_cpt_dev_run_uid"], "targetLabel": "run_uid", "action": "replace"},
]  # fmt: skip

_CAMEL = {"sourceLabels": "source_labels", "targetLabel": "target_label", "regex": "regex", "action": "action",
          "replacement": "replacement", "separator": "separator", "modulus": "modulus"}  # fmt: skip


def relabel_config(relabeling: dict[str, Any]) -> dict[str, Any]:
    """A PodMonitor relabeling as a Prometheus relabel_config."""
    return {_CAMEL[k]: (v.lower() if k == "action" else v) for k, v in relabeling.items()}


def sd_label_name(key: str) -> str:
    """A Kubernetes label key as Prometheus' Kubernetes discovery spells it in `__meta_*` names."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


@dataclass
class PodTarget:
    """A trainer pod as Prometheus' Kubernetes pod discovery sees it: its address, its namespace
    and its labels (what the platform says about it, not what it exports)."""

    address: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"

    def discovered(self) -> dict[str, Any]:
        """The target as a file_sd entry: `__meta_kubernetes_*` labels like the pod role sets."""
        labels = {"__meta_kubernetes_namespace": self.namespace, "__metrics_path__": self.metrics_path}
        for key, value in self.labels.items():
            labels[f"__meta_kubernetes_pod_label_{sd_label_name(key)}"] = value
            labels[f"__meta_kubernetes_pod_labelpresent_{sd_label_name(key)}"] = "true"
        return {"targets": [self.address], "labels": labels}


class PrometheusServer:
    """Debian's prometheus binary on 127.0.0.1, scraping the given pods every second with the
    chart PodMonitor's honorLabels and relabelings. Targets come from file-based discovery
    (`add_target`), so a pod can appear after Prometheus started, as on a cluster; a pod's
    identity labels (namespace, run, run_uid) are its discovered ones, never what it exports."""

    def __init__(self, workdir: Path, targets: list[PodTarget], scrape_interval: str = "1s"):
        for t in targets:
            if not isinstance(t, PodTarget):
                raise TypeError(f"target {t!r}: give a PodTarget (a pod's namespace and labels, as service discovery sees them)")
        self.workdir = workdir
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.targets = list(targets)
        self.proc: subprocess.Popen | None = None

    @property
    def targets_file(self) -> Path:
        return self.workdir / "pods.json"

    def _write_targets(self) -> None:
        tmp = self.workdir / "pods.json.tmp"
        tmp.write_text(json.dumps([t.discovered() for t in self.targets]))
        tmp.replace(self.targets_file)

    def add_target(self, target: PodTarget) -> None:
        """A pod appears (Prometheus applies new targets after ~5 s)."""
        self.targets.append(target)
        self._write_targets()

    def start(self) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("the prometheus binary is missing: apt-get install -y prometheus (make test does)")
        self._write_targets()
        config = {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [{
                "job_name": "trainer",
                "honor_labels": PODMONITOR_HONOR_LABELS,
                "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "1s"}],
                "relabel_configs": [relabel_config(r) for r in PODMONITOR_RELABELINGS],
            }],
        }  # fmt: skip
        path = self.workdir / "prometheus.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.proc = subprocess.Popen(
            [binary, f"--config.file={path}", f"--storage.tsdb.path={self.workdir / 'data'}",
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

    def make(targets: list[PodTarget] | None = None) -> PrometheusServer:
        server = PrometheusServer(tmp_path / f"prom{len(servers)}", targets or [])
        server.workdir.mkdir()
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
