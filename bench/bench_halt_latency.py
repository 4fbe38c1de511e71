"""Halt latency and query load of the metrics control loop, with the default settings.

    .venv/bin/python bench/bench_halt_latency.py --samples 3

Debian's Prometheus (scrape interval 15 s: the chart's PodMonitor default) scrapes a real
exporter on loopback that stands in for a trainer; the Kopf operator (control interval
30 s: the settings default) runs against kmock's emulated API server, one CPTRun per sample.
Halt latency: from the moment the exporter publishes the evaluation that completes the
patience window (3 evaluations over 3 %) to the PyTorchJob's `runPolicy.suspend: true`.
Query load: Prometheus's own count of /api/v1/query and /api/v1/query_range requests per
active run per minute (each pass: one instant query of the latest values, one of the raw
samples in the evaluation window).
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


from cpt_operator import kube  # noqa: E402
from cpt_operator.render.names import pytorchjob_name  # noqa: E402
from cpt_operator.settings import OperatorSettings  # noqa: E402

RUN = "docs-cpt"


def query_count(prom_url: str) -> float:
    text = requests.get(prom_url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("prometheus_http_requests_total")
        and ('handler="/api/v1/query"' in line or 'handler="/api/v1/query_range"' in line)
    )


async def wait_scraped(prom_url: str, namespace: str, timeout: float = 120.0) -> None:
    """Until Prometheus has scraped the run's pod (file SD applies a new target after ~5 s,
    then the first scrape comes within one interval): an evaluation published before that
    and replaced within an eval interval would never reach Prometheus, and the run never halt."""
    deadline = time.monotonic() + timeout
    query = f'up{{job="trainer",namespace="{namespace}"}} == 1'
    while not requests.get(prom_url + "/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Prometheus never scraped the trainer pod of {namespace} in {timeout:g} s")
        await asyncio.sleep(0.5)


async def sample(index: int, scrape_s: float, eval_s: float, workdir: Path) -> tuple[float, float]:
    import kmock
    from harness import ClusterEmulator, OperatorProcess, declare_resources, load_crds
    from harness import test_settings as operator_settings
    from loopback_servers import PrometheusServer
    from trainer_exporter import TrainerExporter, start_run

    # The trainer's master pod, discovered by Prometheus with the labels the operator renders
    # on the PyTorchJob (the chart's PodMonitor gives the series their identity from the pod).
    prom = PrometheusServer(workdir / f"prom{index}", [], scrape_interval=f"{scrape_s:g}s")
    trainers = TrainerExporter(prom)
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
                await start_run(client, namespace, trainers)
                await wait_scraped(prom.url, namespace)
                queries_before, t_before = query_count(prom.url), time.monotonic()
                crossed = None
                for k in range(1, 4):  # three evaluations over the threshold: patience 3
                    trainers.evaluate(namespace, k * 500, 0.06)
                    crossed = time.monotonic()
                    if k < 3:
                        await asyncio.sleep(eval_s)
                # Bounded by a scrape plus a control interval; a run still not halted well after
                # that is a failure to report, not a wait forever.
                deadline = crossed + 2 * (scrape_s + settings.control_interval_seconds) + 60
                while True:
                    job = await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
                    if job["spec"]["runPolicy"].get("suspend"):
                        latency = time.monotonic() - crossed
                        break
                    if time.monotonic() > deadline:
                        status = (await client.get(kube.CPTRUNS, namespace, RUN)).get("status") or {}
                        raise RuntimeError(f"sample {index}: not halted {time.monotonic() - crossed:.0f} s after the 3rd "
                                           f"evaluation over the threshold; phase {status.get('phase')}, evaluations "
                                           f"{[e.get('step') for e in status.get('evaluations') or []]}")  # fmt: skip
                    await asyncio.sleep(0.1)
                minutes = (time.monotonic() - t_before) / 60
                per_minute = (query_count(prom.url) - queries_before) / minutes
            finally:
                await op.stop()
                await client.close()
    finally:
        trainers.close()
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
            print(f"sample {i}: halt latency {latency:.1f} s, {load:.2f} queries/min for 1 active run", flush=True)
    print(f"halt latency: median {statistics.median(latencies):.1f} s, max {max(latencies):.1f} s over {len(latencies)} samples")
    print(f"query load per active run: {statistics.mean(loads):.2f} queries/min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
