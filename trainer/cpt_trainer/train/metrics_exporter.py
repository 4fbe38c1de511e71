"""The Prometheus exporter: every trainer metric of `cpt_trainer.contract.metrics`, one rank serves.

All metrics carry the run identity (`namespace`, `run`); general-eval metrics add `eval`.
Each exporter has its own registry, so several trainers in one process (tests) do not clash.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from cpt_trainer.contract import metrics as m
from cpt_trainer.contract.config import RunIdentity

logger = logging.getLogger(__name__)


class TrainerMetrics:
    """Typed setters over the contract's metrics; `serve(port)` starts the HTTP endpoint."""

    def __init__(self, identity: RunIdentity):
        self.registry = CollectorRegistry()
        self._run = {"namespace": identity.namespace, "run": identity.name}
        self._metrics = {}
        for spec in m.TRAINER_METRICS:
            cls = Counter if spec.kind == "counter" else Gauge
            # prometheus_client appends `_total` to counters itself.
            name = spec.name[: -len("_total")] if spec.kind == "counter" and spec.name.endswith("_total") else spec.name
            self._metrics[spec.name] = cls(name, spec.help, spec.labels, registry=self.registry)
        # Run-labelled series exist from the start, so a scrape lists every name at once.
        for spec in m.TRAINER_METRICS:
            if spec.labels == m.RUN_LABELS:
                self._metrics[spec.name].labels(**self._run)
        self.port: int | None = None
        self._server = None
        self._listed: dict[int, tuple[str, ...]] = {}  # step -> general eval names exported with it

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the endpoint (port 0 picks a free one); returns the bound port."""
        self._server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self.port = self._server.server_port
        logger.info("metrics endpoint on port %d", self.port)
        return self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _gauge(self, spec: m.MetricSpec, value: float, **extra: str) -> None:
        self._metrics[spec.name].labels(**self._run, **extra).set(value)

    def set_total_steps(self, total: int) -> None:
        self._gauge(m.TOTAL_STEPS, total)

    def record_step(self, step: int, loss: float, lr: float, tokens_per_second: float, mfu: float) -> None:
        self._gauge(m.STEP, step)
        self._gauge(m.TRAIN_LOSS, loss)
        self._gauge(m.LEARNING_RATE, lr)
        self._gauge(m.TOKENS_PER_SECOND, tokens_per_second)
        self._gauge(m.MFU, mfu)

    def add_tokens(self, tokens: int) -> None:
        self._metrics[m.TOKENS_SEEN.name].labels(**self._run).inc(tokens)

    def record_eval(self, step: int, domain_perplexity: float | None, general: dict[str, float],
                    baseline: dict[str, float], regression: float | None, stderr: dict[str, float] | None = None,
                    baseline_stderr: dict[str, float] | None = None, higher_is_better: dict[str, bool] | None = None) -> None:
        if domain_perplexity is not None:
            self._gauge(m.DOMAIN_PERPLEXITY, domain_perplexity)
        for name, score in general.items():
            self._gauge(m.GENERAL_SCORE, score, eval=name)
        for name, up in (higher_is_better or {}).items():
            self._gauge(m.GENERAL_SCORE_HIGHER_IS_BETTER, 1 if up else 0, eval=name)
        for name, se in (stderr or {}).items():
            self._gauge(m.GENERAL_SCORE_STDERR, se, eval=name)
        for name, score in baseline.items():
            self._gauge(m.BASELINE_GENERAL_SCORE, score, eval=name)
        for name, se in (baseline_stderr or {}).items():
            self._gauge(m.BASELINE_GENERAL_SCORE_STDERR, se, eval=name)
        if regression is not None:
            self._gauge(m.GENERAL_REGRESSION, regression)
        self._gauge(m.EVAL_STEP, step)

    def record_checkpoint(self, step: int) -> None:
        self._gauge(m.LAST_CHECKPOINT_STEP, step)

    def list_checkpoint(self, step: int, metrics: dict) -> None:
        """Export one complete checkpoint of a volume and the scores its metrics.json holds."""
        label = str(step)
        self._gauge(m.CHECKPOINT_PRESENT, 1, step=label)
        if metrics.get("domain_perplexity") is not None:
            self._gauge(m.CHECKPOINT_DOMAIN_PERPLEXITY, metrics["domain_perplexity"], step=label)
        if metrics.get("general_regression") is not None:
            self._gauge(m.CHECKPOINT_GENERAL_REGRESSION, metrics["general_regression"], step=label)
        self._gauge(m.CHECKPOINT_ATTEMPT, int(metrics.get("attempt") or 0), step=label)
        scores = dict(metrics.get("general_scores") or {})
        for name, score in scores.items():
            self._gauge(m.CHECKPOINT_GENERAL_SCORE, score, step=label, eval=name)
        if metrics.get("baseline_domain_perplexity") is not None:
            self._gauge(m.BASELINE_DOMAIN_PERPLEXITY, metrics["baseline_domain_perplexity"])
        self._listed[step] = tuple(scores)

    def unlist_checkpoint(self, step: int) -> None:
        """Remove a deleted checkpoint's series."""
        evals = self._listed.pop(step, ())
        label = str(step)
        for spec in (m.CHECKPOINT_PRESENT, m.CHECKPOINT_DOMAIN_PERPLEXITY, m.CHECKPOINT_GENERAL_REGRESSION, m.CHECKPOINT_ATTEMPT):
            try:
                self._metrics[spec.name].remove(*self._run.values(), label)
            except KeyError:
                pass
        for name in evals:
            try:
                self._metrics[m.CHECKPOINT_GENERAL_SCORE.name].remove(*self._run.values(), label, name)
            except KeyError:
                pass

    def listed_checkpoints(self) -> list[int]:
        return sorted(self._listed)

    def count_checkpoint_failure(self) -> None:
        self._metrics[m.CHECKPOINT_FAILURES.name].labels(**self._run).inc()
