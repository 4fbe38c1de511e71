"""Reading a run's metrics: the Prometheus HTTP API, or the trainer's /metrics directly.

Every tenant-supplied value reaches PromQL only through `label_matcher`, which escapes it
as a PromQL string literal, so a crafted run name or namespace cannot widen a selector.

A series' run identity is what service discovery says about the pod Prometheus scraped, never
what the pod exported (a tenant controls its pods' output): the chart's PodMonitor sets
`namespace` from the pod's namespace and `run` / `run_uid` from the labels the operator puts
on the pods it creates (cpt.dev/run, cpt.dev/run-uid), with honorLabels false, so a trainer's
own `namespace`/`run` labels arrive as `exported_namespace`/`exported_run`. The operator
selects by all three (`IDENTITY_LABELS`): a pod of another namespace cannot feed a run, and a
run recreated under the same name (a new uid) never reads the old run's series.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from cpt_trainer.contract import metrics as names


MAX_RECOVERY_SECONDS = 6 * 3600.0
"""The longest gap the evaluation range query reaches back over (an operator down for hours)."""
MAX_RANGE_POINTS = 2000


def evaluation_window(last_pass: float | None, now: float, interval: float) -> tuple[float, float]:
    """(window, step) of the range query that recovers the evaluations since the last pass.

    Normally three intervals plus a minute (two missed passes); after a longer gap (the
    operator was down, Prometheus was unreachable) back to the last pass that wrote the
    status, at most MAX_RECOVERY_SECONDS, with a step that keeps the answer small."""
    window = 3 * interval + 60
    if last_pass is not None and now - last_pass + 60 > window:
        window = min(now - last_pass + 60, MAX_RECOVERY_SECONDS)
    return window, max(5.0, window / MAX_RANGE_POINTS)


class MetricsUnavailable(Exception):
    """Prometheus (or the trainer endpoint) could not be read."""


MAX_WARNINGS = 5
"""Most of an answer's warnings kept (each cut to MAX_WARNING_CHARS) to report in a condition."""
MAX_WARNING_CHARS = 300


def answer_warnings(payload: dict[str, Any]) -> list[str]:
    """The `warnings` of a Prometheus API answer: set when the answer is partial (a remote
    read or a store that did not answer, a query limit hit), so its absence of a series does
    not mean the series is absent."""
    raw = payload.get("warnings") or []
    if not isinstance(raw, list):
        raw = [raw]
    return [str(w)[:MAX_WARNING_CHARS] for w in raw[:MAX_WARNINGS]]


def escape_label_value(value: str) -> str:
    """A PromQL double-quoted string literal's body for `value`."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_matcher(**labels: str) -> str:
    """`{a="x",b="y"}` with every value escaped."""
    inner = ",".join(f'{key}="{escape_label_value(str(value))}"' for key, value in sorted(labels.items()))
    return "{" + inner + "}"


IDENTITY_LABELS = ("namespace", "run", "run_uid")
"""The target labels (set by the PodMonitor's relabelings from service discovery) that name a run."""


def identity_matcher(namespace: str, run: str, uid: str) -> str:
    """`{namespace="..",run="..",run_uid=".."}`, escaped. Every part must be non-empty: in PromQL
    `run_uid=""` also matches series without the label (a scrape that did not set it)."""
    if not (namespace and run and uid):
        raise MetricsUnavailable(f"run identity incomplete (namespace={namespace!r}, run={run!r}, uid={uid!r}): no query made")
    return label_matcher(namespace=namespace, run=run, run_uid=uid)


def run_selector(namespace: str, run: str, uid: str) -> str:
    """All cpt_ trainer metrics of one run (one query per control-loop pass)."""
    return identity_matcher(namespace, run, uid)[:-1] + ',__name__=~"cpt_.+"}'


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None


@dataclass
class RunMetrics:
    """The latest value of each trainer metric of one run; general metrics by eval name."""

    values: dict[str, float] = field(default_factory=dict)
    general_scores: dict[str, float] = field(default_factory=dict)
    baseline_general_scores: dict[str, float] = field(default_factory=dict)
    general_stderr: dict[str, float] = field(default_factory=dict)  # benchmarks only
    baseline_general_stderr: dict[str, float] = field(default_factory=dict)  # benchmarks only
    general_higher_is_better: dict[str, bool] = field(default_factory=dict)
    # The newest sample's own timestamp (Prometheus: when it was scraped; a direct scrape: now),
    # never the query's evaluation time, so metricsStaleSeconds measures the data's age.
    newest_timestamp: float | None = None
    # Prometheus' warnings on any of the pass's queries: the answer may be partial.
    warnings: list[str] = field(default_factory=list)
    # Evaluations seen over a recent window (range query), so an evaluation between two
    # control passes is not lost: [{"step", "domainPerplexity", "generalRegression"}].
    recent_evaluations: list[dict[str, float | int | None]] = field(default_factory=list)
    # The complete checkpoints the trainer lists for a volume (PVC storage), by step, in the
    # shape of their metrics.json: {"domain_perplexity", "general_scores", "general_regression"}.
    volume_checkpoints: dict[int, dict[str, Any]] = field(default_factory=dict)
    baseline_domain_perplexity: float | None = None

    def get(self, spec: names.MetricSpec) -> float | None:
        return self.values.get(spec.name)


_LISTING = {spec.name for spec in names.CHECKPOINT_LISTING}


def _list_checkpoint(out: RunMetrics, s: Sample) -> None:
    step_text = s.labels.get("step", "")
    if not step_text.isdigit():
        return
    entry = out.volume_checkpoints.setdefault(int(step_text), {"general_scores": {}})
    if s.name == names.CHECKPOINT_DOMAIN_PERPLEXITY.name:
        entry["domain_perplexity"] = s.value
    elif s.name == names.CHECKPOINT_GENERAL_REGRESSION.name:
        entry["general_regression"] = s.value
    elif s.name == names.CHECKPOINT_GENERAL_SCORE.name:
        entry["general_scores"][s.labels.get("eval", "")] = s.value
    elif s.name == names.CHECKPOINT_ATTEMPT.name:
        entry["attempt"] = int(s.value)
    else:
        entry["present"] = s.value == 1


def run_metrics_from_samples(samples: list[Sample]) -> RunMetrics:
    out = RunMetrics()
    for s in samples:
        name = s.name
        if name.endswith("_created"):
            continue  # prometheus-client's counter creation times
        if name in _LISTING:
            _list_checkpoint(out, s)
        elif name == names.BASELINE_DOMAIN_PERPLEXITY.name:
            out.baseline_domain_perplexity = s.value
        elif name == names.GENERAL_SCORE.name:
            out.general_scores[s.labels.get("eval", "")] = s.value
        elif name == names.BASELINE_GENERAL_SCORE.name:
            out.baseline_general_scores[s.labels.get("eval", "")] = s.value
        elif name == names.GENERAL_SCORE_STDERR.name:
            out.general_stderr[s.labels.get("eval", "")] = s.value
        elif name == names.BASELINE_GENERAL_SCORE_STDERR.name:
            out.baseline_general_stderr[s.labels.get("eval", "")] = s.value
        elif name == names.GENERAL_SCORE_HIGHER_IS_BETTER.name:
            out.general_higher_is_better[s.labels.get("eval", "")] = s.value == 1
        else:
            out.values[name] = s.value
        if s.timestamp is not None:
            out.newest_timestamp = max(out.newest_timestamp or 0.0, s.timestamp)
    # Only checkpoints whose presence series is there are listed (a score alone is not a checkpoint).
    out.volume_checkpoints = {k: v for k, v in out.volume_checkpoints.items() if v.pop("present", False)}
    return out


class PrometheusClient:
    """Instant and range queries over the Prometheus HTTP API."""

    def __init__(self, url: str, bearer_token: str | None = None, ca_file: str | None = None, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if bearer_token:
            self.session.headers["Authorization"] = f"Bearer {bearer_token}"
        self.verify: bool | str = ca_file or True
        self.timeout = timeout
        self.last_latency: float | None = None

    def _get(self, path: str, params: dict[str, Any]) -> tuple[Any, list[str]]:
        """The answer's `data` and its warnings (a partial answer)."""
        started = time.perf_counter()
        try:
            resp = self.session.get(self.url + path, params=params, timeout=self.timeout, verify=self.verify)
            payload = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise MetricsUnavailable(f"Prometheus at {self.url} did not answer: {exc}") from None
        finally:
            self.last_latency = time.perf_counter() - started
        if resp.status_code != 200 or not isinstance(payload, dict) or payload.get("status") != "success":
            error = payload.get("error", payload) if isinstance(payload, dict) else payload
            raise MetricsUnavailable(f"Prometheus query failed ({resp.status_code}): {error}")
        return payload["data"], answer_warnings(payload)

    def instant(self, promql: str, at: float | None = None) -> tuple[list[Sample], list[str]]:
        """An instant query's samples and the answer's warnings. A sample's `timestamp` is None:
        an instant query answers with the evaluation time, not the sample's own."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        data, warnings = self._get("/api/v1/query", params)
        samples = [Sample(r["metric"].get("__name__", ""), r["metric"], float(r["value"][1])) for r in data.get("result", [])]
        return samples, warnings

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        return self.instant(promql, at)[0]

    def newest_sample_time(self, namespace: str, run: str, uid: str, at: float | None = None) -> tuple[float | None, list[str]]:
        """When Prometheus last scraped the run's `cpt_step` (the newest of its series' own
        sample timestamps, `timestamp()` of a plain selector); None when there is none.

        One metric name on purpose: `timestamp()` drops `__name__`, and two series of one
        target that differ only by name would make the answer an error."""
        samples, warnings = self.instant(f"timestamp({names.STEP.name}{identity_matcher(namespace, run, uid)})", at)
        values = [s.value for s in samples if math.isfinite(s.value)]
        return (max(values) if values else None), warnings

    def query_range(self, promql: str, start: float, end: float, step: float) -> dict[tuple[str, tuple], list[tuple[float, float]]]:
        data, _warnings = self._get("/api/v1/query_range", {"query": promql, "start": start, "end": end, "step": step})
        out: dict[tuple[str, tuple], list[tuple[float, float]]] = {}
        for r in data.get("result", []):
            key = (r["metric"].get("__name__", ""), tuple(sorted(r["metric"].items())))
            out[key] = [(float(t), float(v)) for t, v in r["values"]]
        return out

    def query_samples(self, promql: str, start: float, end: float) -> dict[tuple[str, tuple], list[tuple[float, float]]]:
        """Every raw sample of the selector `promql` in (start, end]: an instant query of a range
        vector, in query_range's shape. Unlike a range query, whose points are the latest sample
        at each step, no value is skipped however briefly it lasted."""
        return self._raw_samples(promql, start, end)[0]

    def _raw_samples(self, promql: str, start: float, end: float) -> tuple[dict[tuple[str, tuple], list[tuple[float, float]]], list[str]]:
        seconds = max(1, math.ceil(end - start))
        data, warnings = self._get("/api/v1/query", {"query": f"{promql}[{seconds}s]", "time": end})
        out: dict[tuple[str, tuple], list[tuple[float, float]]] = {}
        for r in data.get("result", []):
            key = (r["metric"].get("__name__", ""), tuple(sorted(r["metric"].items())))
            out[key] = [(float(t), float(v)) for t, v in r.get("values", [])]
        return out, warnings

    def run_metrics(self, namespace: str, run: str, uid: str, window_seconds: float = 0.0, step_seconds: float = 5.0) -> RunMetrics:
        """The run's latest metrics (one instant query), when they were scraped (a second one,
        `newest_sample_time`) and, with a window, its evaluations in that window (one query of
        their raw samples); `uid` is the CPTRun's metadata.uid. Every answer's warnings are
        collected in `RunMetrics.warnings`."""
        at = time.time()
        samples, warnings = self.instant(run_selector(namespace, run, uid), at)
        out = run_metrics_from_samples(samples)
        if out.values:
            out.newest_timestamp, more = self.newest_sample_time(namespace, run, uid, at)
            warnings += more
        if window_seconds > 0 and out.values:
            out.recent_evaluations, more = self._evaluations_between(namespace, run, uid, at - window_seconds, at)
            warnings += more
        out.warnings = warnings[:MAX_WARNINGS]
        return out

    def evaluations_between(
        self, namespace: str, run: str, uid: str, start: float, end: float, step: float
    ) -> list[dict[str, float | int | None]]:
        """Every evaluation whose samples fall in [start, end], by step, oldest first.

        Read from the raw samples (`query_samples`), not a range query at `step` (kept for
        callers, unused): a range query's points are the latest sample every `step` seconds, so
        an evaluation replaced within one step (a fast eval cadence, a coarse recovery step)
        was never seen and its regression never counted towards patience."""
        return self._evaluations_between(namespace, run, uid, start, end)[0]

    def _evaluations_between(
        self, namespace: str, run: str, uid: str, start: float, end: float
    ) -> tuple[list[dict[str, float | int | None]], list[str]]:
        wanted = (names.EVAL_STEP.name, names.GENERAL_REGRESSION.name, names.DOMAIN_PERPLEXITY.name)
        selector = identity_matcher(namespace, run, uid)[:-1] + f',__name__=~"{"|".join(wanted)}"}}'
        series, warnings = self._raw_samples(selector, start, end)
        by_time: dict[float, dict[str, float]] = {}
        for (name, _labels), points in series.items():
            for ts, value in points:
                by_time.setdefault(ts, {})[name] = value
        evals: dict[int, dict[str, float | int | None]] = {}
        for ts in sorted(by_time):
            row = by_time[ts]
            if names.EVAL_STEP.name not in row:
                continue
            step_no = int(row[names.EVAL_STEP.name])
            evals.setdefault(step_no, {
                "step": step_no,
                "domainPerplexity": row.get(names.DOMAIN_PERPLEXITY.name),
                "generalRegression": row.get(names.GENERAL_REGRESSION.name),
            })  # fmt: skip
        return [evals[k] for k in sorted(evals)], warnings


def scrape_run_metrics(url: str, namespace: str, run: str, timeout: float = 5.0) -> RunMetrics:
    """Direct-scrape fallback: read one trainer's /metrics endpoint. The caller vouches that
    `url` is the run's own trainer (local mode: the process it started; without Prometheus: a
    pod of the run's namespace carrying the run's cpt.dev/run-uid, `handlers.control`); only
    series that also name this namespace and run are read."""
    try:
        text = requests.get(url, timeout=timeout).text
    except requests.RequestException as exc:
        raise MetricsUnavailable(f"trainer metrics at {url} did not answer: {exc}") from None
    scraped_at = time.time()  # the exposition format carries no timestamps: the scrape's time is theirs
    samples = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("namespace") == namespace and s.labels.get("run") == run and s.name.startswith("cpt_"):
                samples.append(Sample(s.name, dict(s.labels), float(s.value), scraped_at))
    return run_metrics_from_samples(samples)
