"""The trainer's side of the control loop in operator tests: one exporter per run's master pod
with the contract's metric names and labels on loopback (values driven by the test), discovered
by the test Prometheus with the pod's namespace and labels (the chart PodMonitor's relabelings),
a started run of the `minimal` example, and an operator reading Prometheus."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from flows import apply_all, finish_curation, wait_object
from harness import OperatorProcess
from harness import test_settings as operator_settings
from loopback_servers import PodTarget, PrometheusServer, free_port
from manifests import example
from cpt_operator import kube
from cpt_operator.render.names import pytorchjob_name
from cpt_trainer.contract import metrics as names

RUN = "docs-cpt"
TOTAL_TOKENS = 20_000_000_000  # 20x the example's: ~19,000 steps
SPECS = (
    names.STEP, names.EVAL_STEP, names.GENERAL_REGRESSION, names.DOMAIN_PERPLEXITY, names.TOKENS_PER_SECOND,
    names.CHECKPOINT_PRESENT, names.CHECKPOINT_DOMAIN_PERPLEXITY, names.CHECKPOINT_GENERAL_REGRESSION,
    names.BASELINE_DOMAIN_PERPLEXITY,
)  # fmt: skip


class PodExporter:
    """One trainer pod's /metrics on loopback: the contract's gauges, labelled with whatever
    namespace and run the pod claims (Prometheus gives the series their identity from the pod)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {spec.name: Gauge(spec.name, spec.help, spec.labels, registry=self.registry) for spec in SPECS}
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def evaluate(self, namespace: str, run: str, step: int, regression: float, domain: float | None = None) -> None:
        """An evaluation at `step` (domain perplexity 20 - step/1000 unless given)."""
        domain = 20.0 - step / 1000 if domain is None else domain
        for metric, value in ((names.STEP, step), (names.EVAL_STEP, step), (names.GENERAL_REGRESSION, regression),
                              (names.DOMAIN_PERPLEXITY, domain), (names.TOKENS_PER_SECOND, 1e5)):  # fmt: skip
            self.gauges[metric.name].labels(namespace, run).set(value)

    def list_checkpoint(self, namespace: str, run: str, step: int, domain: float, regression: float, baseline: float = 30.0) -> None:
        """What a trainer exports for a checkpoint on its volume."""
        self.gauges[names.CHECKPOINT_PRESENT.name].labels(namespace, run, str(step)).set(1)
        self.gauges[names.CHECKPOINT_DOMAIN_PERPLEXITY.name].labels(namespace, run, str(step)).set(domain)
        self.gauges[names.CHECKPOINT_GENERAL_REGRESSION.name].labels(namespace, run, str(step)).set(regression)
        self.gauges[names.BASELINE_DOMAIN_PERPLEXITY.name].labels(namespace, run).set(baseline)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TrainerExporter:
    """Stands in for the trainers of several runs: one `PodExporter` per run, each discovered by
    `prometheus` as the run's master pod, with the labels the operator rendered on its
    PyTorchJob's Master template (cpt.dev/run, cpt.dev/run-uid) and the run's namespace, as the
    chart's PodMonitor discovers it. `start_run(client, namespace, trainers)` starts a run's pod."""

    def __init__(self, prometheus: PrometheusServer) -> None:
        self.prometheus = prometheus
        self.pods: dict[tuple[str, str], PodExporter] = {}

    async def start_pod(self, client: kube.KubeClient, namespace: str, run: str = RUN) -> PodExporter:
        """The run's master pod, as the training operator would create it from the PyTorchJob."""
        job = await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name(run))
        labels = dict(job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["metadata"]["labels"])
        pod = self.pods.get((namespace, run))
        if pod is None:
            pod = self.pods[(namespace, run)] = PodExporter()
        self.prometheus.add_target(PodTarget(pod.address, namespace, labels))
        return pod

    def _pod(self, namespace: str, run: str) -> PodExporter:
        if (namespace, run) not in self.pods:
            raise AssertionError(f"no trainer pod of {namespace}/{run}: start_run(client, namespace, trainers) first")
        return self.pods[(namespace, run)]

    def evaluate(self, namespace: str, step: int, regression: float, domain: float | None = None, run: str = RUN) -> None:
        """An evaluation at `step` by the run's trainer (domain perplexity 20 - step/1000 unless given)."""
        self._pod(namespace, run).evaluate(namespace, run, step, regression, domain)

    def list_checkpoint(self, namespace: str, step: int, domain: float, regression: float, baseline: float = 30.0,
                        run: str = RUN) -> None:  # fmt: skip
        """What a trainer exports for a checkpoint on its volume."""
        self._pod(namespace, run).list_checkpoint(namespace, run, step, domain, regression, baseline)

    def close(self) -> None:
        for pod in self.pods.values():
            pod.close()


async def start_run(client: kube.KubeClient, namespace: str, trainers: TrainerExporter | None = None) -> None:
    """The minimal example applied, its corpus curated, its PyTorchJob Running (and, with
    `trainers`, its master pod's exporter discovered by their Prometheus). The run is made long
    enough (about 19,000 steps) for the steps the fake trainers report: the operator ignores a
    listed checkpoint beyond the run's totalSteps (the example's 954)."""
    docs = example("minimal", namespace)
    docs[f"CPTRun/{RUN}"]["spec"]["training"]["totalTokens"] = TOTAL_TOKENS
    await apply_all(client, list(docs.values()))
    await finish_curation(client, namespace, "docs")
    await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
    if trainers is not None:
        await trainers.start_pod(client, namespace)
    await client.patch(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN),
                       {"status": {"conditions": [{"type": "Running", "status": "True"}]}})  # fmt: skip


async def start_operator(url: str, prometheus_url: str, interval: float = 0.5) -> OperatorProcess:
    """The operator on the emulator at `url`, its control loop reading `prometheus_url`."""
    settings = operator_settings()
    settings.prometheus_url = prometheus_url
    settings.control_interval_seconds = interval
    op = OperatorProcess(url, settings)
    await op.start()
    return op
