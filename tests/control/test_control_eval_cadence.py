"""Evaluations between two control passes at the production cadence (control interval 30 s):
the operator's read of the window recovers every evaluation Prometheus scraped, however
briefly each one was the trainer's latest, so none is lost to the patience count."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from loopback_servers import PodTarget, free_port
from cpt_operator.control.prometheus import PrometheusClient, evaluation_window
from cpt_trainer.contract import metrics as names

EVALS = [(100, 0.01), (200, 0.05), (300, 0.07), (400, 0.06), (500, 0.08), (600, 0.09)]


def test_every_scraped_evaluation_between_30s_passes_is_recovered(prometheus_factory):
    # Evaluations 2 s apart (each scraped about twice at the test Prometheus' 1 s interval),
    # shorter-lived than the 5 s step of the normal 30 s cadence's window: a range query at
    # that step sees only about every other one.
    registry = CollectorRegistry()
    specs = (names.STEP, names.EVAL_STEP, names.GENERAL_REGRESSION, names.DOMAIN_PERPLEXITY)
    gauges = {s.name: Gauge(s.name, s.help, s.labels, registry=registry) for s in specs}
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory([PodTarget(f"127.0.0.1:{port}", "ns", {"cpt.dev/run": "run", "cpt.dev/run-uid": "uid-1"})])
        client = PrometheusClient(prom.url)
        deadline = time.monotonic() + 30
        while not client.query('up{job="trainer"} == 1'):  # Prometheus applies new targets after ~5 s
            assert time.monotonic() < deadline, "the trainer pod was never scraped"
            time.sleep(0.5)
        last_pass = time.time()
        for step, regression in EVALS:  # no control pass in between
            for spec, value in ((names.STEP, step), (names.EVAL_STEP, step), (names.GENERAL_REGRESSION, regression),
                                (names.DOMAIN_PERPLEXITY, 20 - step / 1000)):  # fmt: skip
                gauges[spec.name].labels("ns", "run").set(value)
            time.sleep(2.0)
        time.sleep(1.5)  # the last one scraped
        window, step = evaluation_window(last_pass, time.time(), 30.0)  # what the next pass reads
        assert step == 5.0
        m = client.run_metrics("ns", "run", "uid-1", window, step)
        assert [(e["step"], e["generalRegression"]) for e in m.recent_evaluations] == EVALS
        assert [e["domainPerplexity"] for e in m.recent_evaluations] == [20 - s / 1000 for s, _ in EVALS]
    finally:
        server.shutdown()
