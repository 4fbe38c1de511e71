"""The operator's Prometheus client against a real Prometheus scraping a real exporter on
loopback: reads a run's metrics, and crafted run names cannot widen a PromQL selector."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from loopback_servers import PodTarget, free_port
from cpt_operator.control.prometheus import (
    MetricsUnavailable,
    PrometheusClient,
    escape_label_value,
    label_matcher,
    scrape_run_metrics,
)
from cpt_trainer.contract import metrics as names

CRAFTED = ['evil"}', 'x",run=~".+', "back\\slash", 'multi\nline', "a'b"]


def pod(namespace: str, run: str, port: int, uid: str = "uid-1") -> PodTarget:
    """The run's trainer pod as service discovery sees it (the labels the operator renders)."""
    return PodTarget(f"127.0.0.1:{port}", namespace, {"cpt.dev/run": run, "cpt.dev/run-uid": uid})


def exporter(runs: dict[tuple[str, str], float]):
    registry = CollectorRegistry()
    ppl = Gauge(names.DOMAIN_PERPLEXITY.name, names.DOMAIN_PERPLEXITY.help, names.DOMAIN_PERPLEXITY.labels, registry=registry)
    for (ns, run), value in runs.items():
        ppl.labels(ns, run).set(value)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    return port, server


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


def test_escaping_produces_valid_string_literals():
    assert escape_label_value('a"b') == 'a\\"b'
    assert label_matcher(run='x"}') == '{run="x\\"}"}'


def test_reads_each_run_and_crafted_names_stay_inside_their_own_run(prometheus_factory):
    # One pod per run. The crafted names cannot be pod labels (Kubernetes allows no quotes or
    # new-lines in label values): one pod of tenant-c exports them as its own `run` labels, which
    # Prometheus keeps as `exported_run` (the pod's identity is run "c").
    runs = {("tenant-a", "run"): 11.0, ("tenant-b", "run"): 22.0}
    servers, targets = [], []
    for (ns, run), value in runs.items():
        port, server = exporter({(ns, run): value})
        servers.append(server)
        targets.append(pod(ns, run, port))
    port, server = exporter({("tenant-c", name): 100.0 + i for i, name in enumerate(CRAFTED)})
    servers.append(server)
    targets.append(pod("tenant-c", "c", port))
    try:
        prom = prometheus_factory(targets)
        client = PrometheusClient(prom.url)
        wait_for(lambda: len(client.query(names.DOMAIN_PERPLEXITY.name)) == len(runs) + len(CRAFTED))  # every pod scraped
        assert client.run_metrics("tenant-a", "run", "uid-1").get(names.DOMAIN_PERPLEXITY) == 11.0
        assert client.run_metrics("tenant-b", "run", "uid-1").get(names.DOMAIN_PERPLEXITY) == 22.0
        for i, name in enumerate(CRAFTED):
            samples = client.query(names.DOMAIN_PERPLEXITY.name + label_matcher(namespace="tenant-c", exported_run=name))
            assert [(s.labels["exported_run"], s.labels["run"], s.value) for s in samples] == [(name, "c", 100.0 + i)]
            assert client.run_metrics("tenant-c", name, "uid-1").values == {}  # an exported name is no identity
            assert client.run_metrics("tenant-c", "c", name).values == {}
        assert client.run_metrics("tenant-a", 'run"} or vector(1) #', "uid-1").values == {}
        assert client.run_metrics("tenant-a", "run", 'uid-1"} or vector(1) #').values == {}
        assert client.last_latency is not None
    finally:
        for server in servers:
            server.shutdown()


def test_prometheus_down_is_metrics_unavailable():
    client = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(MetricsUnavailable):
        client.run_metrics("ns", "run", "uid-1")


def test_direct_scrape_fallback_reads_only_the_run():
    port, server = exporter({("ns", "run"): 5.0, ("ns", "other"): 6.0})
    try:
        metrics = scrape_run_metrics(f"http://127.0.0.1:{port}/metrics", "ns", "run")
        assert metrics.get(names.DOMAIN_PERPLEXITY) == 5.0
    finally:
        server.shutdown()


def test_the_operator_reads_each_evals_direction_and_both_stderrs_from_the_trainers_exporter():
    from cpt_trainer.contract.config import RunIdentity
    from cpt_trainer.train.metrics_exporter import TrainerMetrics

    trainer = TrainerMetrics(RunIdentity(namespace="ns", name="run"))
    trainer.record_eval(5, 12.0, {"web": 14.0, "cloze": 0.55}, {"web": 13.9, "cloze": 0.6}, 0.08, {"cloze": 0.035},
                        {"cloze": 0.034}, {"web": False, "cloze": True})  # fmt: skip
    port = trainer.serve(0, addr="127.0.0.1")
    try:
        metrics = scrape_run_metrics(f"http://127.0.0.1:{port}/metrics", "ns", "run")
    finally:
        trainer.close()
    assert metrics.general_higher_is_better == {"web": False, "cloze": True}
    assert metrics.general_stderr == {"cloze": 0.035} and metrics.baseline_general_stderr == {"cloze": 0.034}
    assert metrics.baseline_general_scores == {"web": 13.9, "cloze": 0.6}
    assert not {names.BASELINE_GENERAL_SCORE_STDERR.name, names.GENERAL_SCORE_HIGHER_IS_BETTER.name} & set(metrics.values)


def test_evaluations_between_control_passes_are_recovered_by_a_range_query(prometheus_factory):
    registry = CollectorRegistry()
    gauges = {s.name: Gauge(s.name, s.help, s.labels, registry=registry) for s in (names.EVAL_STEP, names.GENERAL_REGRESSION)}
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory([pod("ns", "run", port)])
        client = PrometheusClient(prom.url)
        wait_for(lambda: client.query('up{job="trainer"} == 1'))  # Prometheus applies new targets after ~5 s
        started = time.time()
        for step, regression in ((100, 0.01), (200, 0.05), (300, 0.07)):  # three evaluations, no query in between
            gauges[names.EVAL_STEP.name].labels("ns", "run").set(step)
            gauges[names.GENERAL_REGRESSION.name].labels("ns", "run").set(regression)
            time.sleep(2.5)
        evals = client.evaluations_between("ns", "run", "uid-1", started - 5, time.time(), 0.5)
        assert [(e["step"], e["generalRegression"]) for e in evals] == [(100, 0.01), (200, 0.05), (300, 0.07)]
    finally:
        server.shutdown()


def test_the_evaluation_window_reaches_back_to_the_last_pass_after_an_outage():
    from cpt_operator.control.prometheus import MAX_RECOVERY_SECONDS, evaluation_window
    from cpt_operator.handlers.control import last_pass_time

    now = 1_800_000_000.0
    assert evaluation_window(None, now, 30) == (150, 5.0)  # first pass: two missed passes' worth
    assert evaluation_window(now - 30, now, 30) == (150, 5.0)  # the normal cadence
    assert evaluation_window(now - 2 * 3600, now, 30) == (2 * 3600 + 60, 5.0)  # the operator was down two hours
    window, step = evaluation_window(now - 5 * 3600, now, 30)  # five: a coarser step, at most 2,000 points
    assert window == 5 * 3600 + 60 and step == pytest.approx(window / 2000)
    assert evaluation_window(now - 30 * 3600, now, 30)[0] == MAX_RECOVERY_SECONDS
    assert last_pass_time({"metrics": {"updatedAt": "2027-01-15T08:00:00Z"}}) == 1_800_000_000.0
    assert last_pass_time({}) is None and last_pass_time({"metrics": {"updatedAt": "garbage"}}) is None
