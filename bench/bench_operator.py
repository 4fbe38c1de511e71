"""Benchmark: create N CPTRuns across 50 namespaces against an API server and measure
create -> PyTorchJob present (p50/p99) and the operator's peak RSS.

    .venv/bin/python bench/bench_operator.py --runs 100 1000 --namespaces 50              # --api emulator
    .venv/bin/python bench/bench_operator.py --api real --runs 100 1000 --namespaces 50

`--api emulator` (default): kmock's KubernetesEmulator (see tests/operator/harness.py) runs
in this process. `--api real`: the real control plane of the integration tests
(tests/support/real_cluster.py: etcd, kube-apiserver, kube-controller-manager), a fresh one
per size, with our CRDs, the PyTorchJob CRD and the chart's RBAC applied as
tests/integration does; the operator connects as the operator identity (its ServiceAccount).
Either way the operator runs in a subprocess (`--operator URL`) so its RSS is its own.
Corpora are Ready before the operator starts (emulator: created so; real: their status
written as admin through the status subresource: phase Ready, outputUri, observedGeneration,
which the operator keeps as it is when the Corpus has no curation Job), so the time measured
is the run's reconciliation: checks, rendering, ConfigMap, PyTorchJob.
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


def operator_main(url: str, ca_path: str | None = None) -> None:
    """Subprocess: the real operator against `url`; prints its peak RSS (MiB) at exit.

    The bearer token (real API server) comes in the environment, CPT_BENCH_TOKEN."""
    import kopf

    import cpt_operator.main  # noqa: F401
    from cpt_operator.handlers.context import OperatorContext
    from cpt_operator.kube import ClusterConnection, KubeClient
    from harness import test_settings

    conn = ClusterConnection(server=url, token=os.environ.get("CPT_BENCH_TOKEN") or None, ca_path=ca_path)
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


def summary(runs: int, namespaces: int, created: dict, seen: dict, total: float, out: str) -> dict[str, float]:
    latencies = [seen[k] - created[k] for k in created]
    rss = json.loads(out.strip().splitlines()[-1])["peak_rss_mib"] if out.strip() else float("nan")
    return {"runs": runs, "namespaces": namespaces, "p50_s": statistics.median(latencies), "p99_s": pct(latencies, 0.99),
            "max_s": max(latencies), "total_s": total, "peak_rss_mib": rss}  # fmt: skip


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
        return summary(runs, namespaces, created, seen, total, out)


def real_setup(namespaces: list[str]):  # type: ignore[no-untyped-def]
    """A fresh real control plane with our CRDs, the PyTorchJob CRD and the chart's RBAC (cluster
    scope), and the namespaces; (admin, operator) Identities. Blocking (requests)."""
    for sub in ("support", "integration"):
        if str(ROOT / "tests" / sub) not in sys.path:
            sys.path.insert(0, str(ROOT / "tests" / sub))
    import real_cluster
    from integration_setup import Identity, apply_chart_rbac, apply_crds, our_crds, upstream_crds, wait_for

    cluster = real_cluster.start()
    admin, operator = Identity(cluster.kubeconfig("admin")), Identity(cluster.kubeconfig("operator"))
    apply_crds(admin, our_crds() + upstream_crds())
    for ns in namespaces:
        admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # The default install opts no namespace in; the platform names the tenant namespaces.
    apply_chart_rbac(admin, {"rbac": {"tenantNamespaces": namespaces}})
    # Established is not served yet: a new CRD's watch cache answers 429 "storage is
    # (re)initializing" for a while, which would delay the operator's first lists.
    for path in ("/apis/cpt.dev/v1alpha1/cptruns", "/apis/cpt.dev/v1alpha1/corpora",
                 "/apis/cpt.dev/v1alpha1/checkpointpolicies", "/apis/kubeflow.org/v1/pytorchjobs"):  # fmt: skip
        wait_for(lambda: admin.request("GET", path, params={"limit": "1"}).status_code == 200, timeout=120, what=f"{path} served")
    return admin, operator


async def watch_added(conn, path: str, rv: str, seen: dict[tuple[str, str], float]) -> None:  # type: ignore[no-untyped-def]
    """Records when the ADDED event of each object under `path` reaches us (a watch, no polling)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {conn.token}", "Accept": "application/json"}
    params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "3600"}
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=conn.ssl_context()), timeout=timeout) as session:
        async with session.get(conn.server.rstrip("/") + path, params=params, headers=headers) as resp:
            resp.raise_for_status()
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("type") == "ADDED":
                    meta = event["object"]["metadata"]
                    seen.setdefault((meta["namespace"], meta["name"]), time.monotonic())


async def bench_real(runs: int, namespaces: list[str], admin_id, operator_id) -> dict[str, float]:  # type: ignore[no-untyped-def]
    from manifests import example

    from cpt_operator import kube
    from cpt_operator.kube import KubeClient

    seen: dict[tuple[str, str], float] = {}
    client = KubeClient(admin_id.connection(), user_agent="bench")
    proc = None
    watcher_stream = None
    try:
        for ns in namespaces:
            objs = example("minimal", ns)
            corpus = objs["Corpus/docs"]
            corpus.pop("status", None)
            made = await client.create(kube.CORPORA, ns, corpus)
            # What the curation's end leaves (decide/corpus_phase, handlers/corpus): the operator
            # keeps a Ready Corpus without a curation Job as it is.
            status = {"phase": "Ready", "outputUri": "/mnt/cpt/pvc/team-data/curated/docs",
                      "observedGeneration": made["metadata"]["generation"]}  # fmt: skip
            await client.patch_status(kube.CORPORA, ns, "docs", {"status": status})
            await client.create(kube.CHECKPOINT_POLICIES, ns, objs["CheckpointPolicy/default"])
        status_code, listed = await client._request("GET", kube.PYTORCHJOBS.path(), "list", params={"limit": "1"})
        client._check(status_code, listed)
        watcher_stream = asyncio.create_task(watch_added(admin_id.connection(), kube.PYTORCHJOBS.path(),
                                                         listed["metadata"]["resourceVersion"], seen))  # fmt: skip
        template = example("minimal", "x")["CPTRun/docs-cpt"]
        env = {**os.environ, "CPT_BENCH_TOKEN": operator_id.token}
        proc = subprocess.Popen([sys.executable, __file__, "--operator", operator_id.server, "--ca", str(operator_id.ca_path)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)  # fmt: skip
        await asyncio.sleep(4.0)  # the operator starts and lists everything
        # ...and has handled every Corpus (Kopf's diff-base annotation, handlers/startup.py), so it is listening.
        handled = "cpt.dev/last-handled-digest"
        deadline = time.monotonic() + 180
        while True:
            items = (await client._request("GET", kube.CORPORA.path(), "list"))[1]["items"]
            if sum(1 for c in items if handled in (c["metadata"].get("annotations") or {})) >= len(namespaces):
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the operator did not reconcile the Corpora")
            await asyncio.sleep(0.2)
        created: dict[tuple[str, str], float] = {}

        async def watch() -> None:
            while not all(k in seen for k in created) or len(created) < runs:
                if watcher_stream.done():
                    watcher_stream.result()
                    raise RuntimeError("the PyTorchJob watch ended")
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        t0 = time.monotonic()
        for i in range(runs):
            ns = namespaces[i % len(namespaces)]
            body = copy.deepcopy(template)
            body["metadata"] = {"name": f"run-{i:04d}", "namespace": ns}
            created[(ns, body["metadata"]["name"])] = time.monotonic()
            await client.create(kube.CPTRUNS, ns, body)
        await asyncio.wait_for(watcher, timeout=600)
        total = time.monotonic() - t0
    finally:
        out = ""
        if proc is not None:
            proc.terminate()
            out, _ = proc.communicate(timeout=60)
        if watcher_stream is not None:
            watcher_stream.cancel()
        await client.close()
    return summary(runs, len(namespaces), created, seen, total, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--namespaces", type=int, default=50)
    p.add_argument("--api", choices=["emulator", "real"], default="emulator",
                   help="emulator: kmock in this process; real: the tests' control plane (tests/support/real_cluster.py)")
    p.add_argument("--operator", help=argparse.SUPPRESS)
    p.add_argument("--ca", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.operator:
        operator_main(args.operator, args.ca)
        return
    print(f"API server: {args.api}")
    print("| runs | namespaces | create->PyTorchJob p50 | p99 | max | all created in | operator peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.runs:
        if args.api == "real":
            sys.path.insert(0, str(ROOT / "tests" / "support"))
            import real_cluster

            nss = [f"bench-tenant-{i:02d}" for i in range(args.namespaces)]
            try:
                admin_id, operator_id = real_setup(nss)
                r = asyncio.run(bench_real(n, nss, admin_id, operator_id))
            finally:
                real_cluster.stop()  # a fresh control plane for each size
        else:
            r = asyncio.run(bench(n, args.namespaces))
        print(f"| {r['runs']} | {r['namespaces']} | {r['p50_s']:.3f} s | {r['p99_s']:.3f} s | {r['max_s']:.3f} s | "
              f"{r['total_s']:.1f} s | {r['peak_rss_mib']:.0f} MiB |", flush=True)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
