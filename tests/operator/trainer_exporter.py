"""The trainer's side of the control loop in operator tests: an exporter with the contract's
metric names and labels on loopback (values driven by the test), a started run of the
`minimal` example, and an operator reading Prometheus."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from flows import apply_all, finish_curation, wait_object
from harness import OperatorProcess
from harness import test_settings as operator_settings
from loopback_servers import free_port
from manifests import example
from cpt_operator import kube
from cpt_operator.render.names import pytorchjob_name
from cpt_trainer.contract import metrics as names

RUN = "docs-cpt"
SPECS = (
    names.STEP, names.EVAL_STEP, names.GENERAL_REGRESSION, names.DOMAIN_PERPLEXITY, names.TOKENS_PER_SECOND,
    names.CHECKPOINT_PRESENT, names.CHECKPOINT_DOMAIN_PERPLEXITY, names.CHECKPOINT_GENERAL_REGRESSION,
    names.BASELINE_DOMAIN_PERPLEXITY,
)  # fmt: skip


class TrainerExporter:
    """Stands in for the trainers of several runs (one series per namespace/run)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {spec.name: Gauge(spec.name, spec.help, spec.labels, registry=self.registry) for spec in SPECS}
        self.port = free_port()
        self.server, _ = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)

    def evaluate(self, namespace: str, step: int, regression: float, domain: float | None = None, run: str = RUN) -> None:
        """An evaluation at `step` (domain perplexity 20 - step/1000 unless given)."""
        domain = 20.0 - step / 1000 if domain is None else domain
        for metric, value in ((names.STEP, step), (names.EVAL_STEP, step), (names.GENERAL_REGRESSION, regression),
                              (names.DOMAIN_PERPLEXITY, domain), (names.TOKENS_PER_SECOND, 1e5)):  # fmt: skip
            self.gauges[metric.name].labels(namespace, run).set(value)

    def list_checkpoint(self, namespace: str, step: int, domain: float, regression: float, baseline: float = 30.0,
                        run: str = RUN) -> None:  # fmt: skip
        """What a trainer exports for a checkpoint on its volume."""
        self.gauges[names.CHECKPOINT_PRESENT.name].labels(namespace, run, str(step)).set(1)
        self.gauges[names.CHECKPOINT_DOMAIN_PERPLEXITY.name].labels(namespace, run, str(step)).set(domain)
        self.gauges[names.CHECKPOINT_GENERAL_REGRESSION.name].labels(namespace, run, str(step)).set(regression)
        self.gauges[names.BASELINE_DOMAIN_PERPLEXITY.name].labels(namespace, run).set(baseline)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def start_run(client: kube.KubeClient, namespace: str) -> None:
    """The minimal example applied, its corpus curated, its PyTorchJob Running."""
    await apply_all(client, list(example("minimal", namespace).values()))
    await finish_curation(client, namespace, "docs")
    await wait_object(client, kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
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
