"""Halt latency and query load of the metrics control loop, with the default settings.

    .venv/bin/python bench/bench_halt_latency.py --samples 3

Debian's Prometheus (scrape interval 15 s: the chart's PodMonitor default) scrapes a real
exporter on loopback that stands in for a trainer; the Kopf operator (control interval
30 s: the settings default) runs against kmock's emulated API server, one CPTRun per sample.
Halt latency: from the moment the exporter publishes the evaluation that completes the
patience window (3 evaluations over 3 %) to the PyTorchJob's `runPolicy.suspend: true`.
Query load: Prometheus's own count of /api/v1/query requests per active run per minute.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "operator"), str(ROOT / "tests" / "support")]

from prometheus_client import CollectorRegistry, Gauge, start_http_server  # noqa: E402

from cpt_operator import kube  # noqa: E402
from cpt_operator.render.names import pytorchjob_name  # noqa: E402
from cpt_operator.settings import OperatorSettings  # noqa: E402
from cpt_trainer.contract import metrics as names  # noqa: E402

RUN = "docs-cpt"


def query_count(prom_url: str) -> float:
    text = requests.get(prom_url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("prometheus_http_requests_total") and 'handler="/api/v1/query"' in line
    )


async def sample(index: int, scrape_s: float, eval_s: float, workdir: Path) -> tuple[float, float]:
    import kmock
    from flows import apply_all, finish_curation, wait_object
    from harness import ClusterEmulator, OperatorProcess, declare_resources, load_crds
    from harness import test_settings as operator_settings
    from loopback_servers import PrometheusServer, free_port
    from manifests import example

    registry = CollectorRegistry()
    gauges = {s.name: Gauge(s.name, s.help, s.labels, registry=registry) for s in (names.STEP, names.EVAL_STEP, names.GENERAL_REGRESSION)}
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    prom = PrometheusServer(workdir / f"prom{index}", [f"127.0.0.1:{port}"], scrape_interval=f"{scrape_s:g}s")
    prom.workdir.mkdir()
    prom.start()
    namespace = f"bench-{index}"
    try:
        async with ClusterEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as api:
            declare_resources(emulator, load_crds())
            settings: OperatorSettings = operator_settings()
            settings.prometheus_url = prom.url  # everything else at its default (control interval 30 s)
            client = kube.KubeClient(kube.ClusterConnection(server=str(api.url).rstrip("/")))
            op = OperatorProcess(str(api.url).rstrip("/"), settings)
            await op.start()
            try:
                await apply_all(client, list(example("minimal", namespace).values()))
                await finish_curation(client, namespace, "docs")
                await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN), timeout=60)
                await client.patch(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN),
                                   {"status": {"conditions": [{"type": "Running", "status": "True"}]}})  # fmt: skip
                queries_before, t_before = query_count(prom.url), time.monotonic()
                crossed = None
                for k in range(1, 4):  # three evaluations over the threshold: patience 3
                    for metric, value in ((names.STEP, k * 500), (names.EVAL_STEP, k * 500), (names.GENERAL_REGRESSION, 0.06)):
                        gauges[metric.name].labels(namespace, RUN).set(value)
                    crossed = time.monotonic()
                    if k < 3:
                        await asyncio.sleep(eval_s)
                while True:
                    job = await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
                    if job["spec"]["runPolicy"].get("suspend"):
                        latency = time.monotonic() - crossed
                        break
                    await asyncio.sleep(0.1)
                minutes = (time.monotonic() - t_before) / 60
                per_minute = (query_count(prom.url) - queries_before) / minutes
            finally:
                await op.stop()
                await client.close()
    finally:
        server.shutdown()
        prom.stop()
    return latency, per_minute


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--scrape-seconds", type=float, default=15.0, help="Prometheus scrape interval (chart default 15 s)")
    parser.add_argument("--eval-seconds", type=float, default=60.0, help="seconds between the fake trainer's evaluations")
    args = parser.parse_args()
    latencies, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.samples):
            latency, load = asyncio.run(sample(i, args.scrape_seconds, args.eval_seconds, Path(tmp)))
            latencies.append(latency)
            loads.append(load)
            print(f"sample {i}: halt latency {latency:.1f} s, {load:.2f} instant queries/min for 1 active run", flush=True)
    print(f"halt latency: median {statistics.median(latencies):.1f} s, max {max(latencies):.1f} s over {len(latencies)} samples")
    print(f"query load per active run: {statistics.mean(loads):.2f} instant queries/min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
