"""Benchmark: create N CPTRuns across 50 namespaces against the emulated API server and
measure create -> PyTorchJob present (p50/p99) and the operator's peak RSS.

    .venv/bin/python bench/bench_operator.py --runs 100 1000 --namespaces 50

The emulator (kmock's KubernetesEmulator, see tests/operator/harness.py) runs in this
process; the operator runs in a subprocess (`--operator URL`), talking to it over HTTP
on 127.0.0.1, so its RSS is its own. Corpora are created already Ready so the time
measured is the run's reconciliation: checks, rendering, ConfigMap, PyTorchJob.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "operator"))


def operator_main(url: str) -> None:
    """Subprocess: the real operator against `url`; prints its peak RSS (MiB) at exit."""
    import kopf

    import cpt_operator.main  # noqa: F401
    from cpt_operator.handlers.context import OperatorContext
    from cpt_operator.kube import ClusterConnection, KubeClient
    from harness import test_settings

    conn = ClusterConnection(server=url)
    ctx = OperatorContext(settings=test_settings(), connection=conn, kube=KubeClient(conn))
    import logging
    import signal

    logging.basicConfig(level=logging.WARNING)
    stop = asyncio.Event()

    async def run() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await kopf.operator(clusterwide=True, standalone=True, memo=kopf.Memo(ctx=ctx), stop_flag=stop)

    asyncio.run(run())
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


async def bench(runs: int, namespaces: int) -> dict[str, float]:
    import kmock
    from harness import ClusterEmulator, declare_resources, load_crds
    from manifests import example

    from cpt_operator import kube
    from cpt_operator.kube import ClusterConnection, KubeClient

    seen: dict[tuple[str, str], float] = {}

    class TimingEmulator(ClusterEmulator):
        """Records when each PyTorchJob creation reaches the server (no polling); keeps no request log."""

        async def _handle(self, request):  # type: ignore[no-untyped-def]
            if request.action == kmock.action.CREATE and request.resource is not None and request.resource.plural == "pytorchjobs":
                meta = (request.data or {}).get("metadata") or {}
                seen.setdefault((meta.get("namespace") or request.namespace, meta.get("name")), time.monotonic())
            try:
                return await super()._handle(request)
            finally:
                # kmock matches each request against every request it recorded (quadratic);
                # the benchmark needs no request log, so served requests are dropped.
                try:
                    self._requests.remove(request)
                except ValueError:
                    pass

    async with TimingEmulator() as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
        declare_resources(emulator, load_crds())
        url = str(server.url).rstrip("/")
        client = KubeClient(ClusterConnection(server=url), user_agent="bench")
        nss = [f"bench-tenant-{i:02d}" for i in range(namespaces)]
        for ns in nss:
            objs = example("minimal", ns)
            corpus = objs["Corpus/docs"]
            corpus["status"] = {"phase": "Ready", "outputUri": "/mnt/cpt/pvc/team-data/curated/docs"}
            await client.create(kube.CORPORA, ns, corpus)
            await client.create(kube.CHECKPOINT_POLICIES, ns, objs["CheckpointPolicy/default"])
        template = example("minimal", "x")["CPTRun/docs-cpt"]
        proc = subprocess.Popen([sys.executable, __file__, "--operator", url], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            await asyncio.sleep(4.0)  # the operator starts and lists everything
            created: dict[tuple[str, str], float] = {}

            async def watch() -> None:
                while len(seen) < runs:
                    await asyncio.sleep(0.01)

            watcher = asyncio.create_task(watch())
            t0 = time.monotonic()
            for i in range(runs):
                ns = nss[i % namespaces]
                body = copy.deepcopy(template)
                body["metadata"] = {"name": f"run-{i:04d}", "namespace": ns}
                created[(ns, body["metadata"]["name"])] = time.monotonic()
                await client.create(kube.CPTRUNS, ns, body)
            await asyncio.wait_for(watcher, timeout=600)
            total = time.monotonic() - t0
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=60)
            await client.close()
        latencies = [seen[k] - created[k] for k in created]
        rss = json.loads(out.strip().splitlines()[-1])["peak_rss_mib"] if out.strip() else float("nan")
        return {"runs": runs, "namespaces": namespaces, "p50_s": statistics.median(latencies), "p99_s": pct(latencies, 0.99),
                "max_s": max(latencies), "total_s": total, "peak_rss_mib": rss}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--operator", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.operator:
        operator_main(args.operator)
        return
    print("| runs | namespaces | create->PyTorchJob p50 | p99 | max | all created in | operator peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.runs:
        r = asyncio.run(bench(n, args.namespaces))
        print(f"| {r['runs']} | {r['namespaces']} | {r['p50_s']:.3f} s | {r['p99_s']:.3f} s | {r['max_s']:.3f} s | "
              f"{r['total_s']:.1f} s | {r['peak_rss_mib']:.0f} MiB |", flush=True)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
