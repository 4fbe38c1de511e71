"""The dashboard and the alerts query only metrics the trainer and the operator export
(cpt_trainer.contract.metrics, the one module naming them), and the monitors select what the
operator renders."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from cpt_trainer.contract import metrics as contract

from chart_support import CHART_DIR, SCENARIOS, find, one

HISTOGRAMS = {m.name for m in contract.TRAINER_METRICS + contract.OPERATOR_METRICS if m.kind == "histogram"}

PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "count_over_time", "delta", "deriv", "exp", "floor", "histogram_quantile", "holt_winters", "idelta", "increase",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log2", "log10", "max_over_time", "min_over_time",
    "predict_linear", "present_over_time", "quantile_over_time", "rate", "resets", "round", "scalar", "sort",
    "sort_desc", "sqrt", "stddev_over_time", "sum_over_time", "time", "timestamp", "vector",
}
PROMQL_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}
GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"


def metric_names(query: str) -> set[str]:
    """Metric identifiers in a PromQL query (or a Grafana `label_values(metric, label)`)."""
    lv = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?\s*,\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*", query)
    if lv:
        return {lv.group(1)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)  # string literals (label values)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations, $__rate_interval
    text = re.sub(GROUPING, "", text)  # label lists of grouping modifiers
    text = re.sub(r"\boffset\s+-?[0-9a-zA-Z]+", "", text)  # offset durations
    text = re.sub(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b", "", text)  # numbers
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        token = match.group(0)
        follows = text[match.end() :].lstrip()[:1]
        if token in PROMQL_KEYWORDS or (follows == "(" and token in PROMQL_FUNCTIONS | PROMQL_AGGREGATIONS):
            continue
        names.add(token)
    return names


def unknown_metrics(query: str) -> set[str]:
    out = set()
    for name in metric_names(query):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in contract.ALL_METRIC_NAMES:
            continue
        if base in HISTOGRAMS and base != name:
            continue
        out.add(name)
    return out


def test_parser_finds_metrics_and_only_metrics() -> None:
    q = 'histogram_quantile(0.99, sum by (le) (rate(cpt_operator_query_seconds_bucket{job="x"}[5m]))) > 5 and on (namespace, run) max by (namespace) (cpt_step offset 5m)'
    assert metric_names(q) == {"cpt_operator_query_seconds_bucket", "cpt_step"}
    assert unknown_metrics(q) == set()
    assert unknown_metrics("rate(cpt_tokens_seen_total[5m]) / cpt_bogus_metric") == {"cpt_bogus_metric"}
    assert unknown_metrics("cpt_step_bucket") == {"cpt_step_bucket"}  # _bucket only for histograms
    assert metric_names('label_values(cpt_step{namespace=~"$namespace"}, run)') == {"cpt_step"}
    assert unknown_metrics("label_values(up, job)") == {"up"}


def dashboard() -> dict[str, Any]:
    return json.loads((CHART_DIR / "dashboards" / "cpt-runs.json").read_text(encoding="utf-8"))


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            queries.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return queries


def test_dashboard_queries_use_only_exported_metrics() -> None:
    queries = dashboard_queries(dashboard())
    assert len(queries) >= 15
    assert {q: unknown_metrics(q) for q in queries if unknown_metrics(q)} == {}


def test_dashboard_shows_what_the_issue_asks_for() -> None:
    dash = dashboard()
    by_title = {p["title"]: {n for t in p.get("targets", []) for n in metric_names(t["expr"])} for p in dash["panels"]}
    assert {"cpt_domain_perplexity", "cpt_general_score"} <= by_title["Domain perplexity vs general score"]
    used = set().union(*by_title.values())
    for name in ("cpt_train_loss", "cpt_learning_rate", "cpt_tokens_per_second", "cpt_mfu_ratio", "cpt_last_checkpoint_step",
                 "cpt_checkpoint_upload_failures_total", "cpt_general_regression_ratio"):
        assert name in used, name
    # Every panel query is filtered by the run variables (trainer metrics) or is an operator metric.
    for q in dashboard_queries(dash):
        trainer = {n for n in metric_names(q) if not n.startswith("cpt_operator_")}
        if trainer and not q.startswith("label_values"):
            assert 'run=~"$run"' in q and 'namespace=~"$namespace"' in q, q


def alert_rules(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    rule = one(objects, "PrometheusRule")
    return {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}


def test_alert_queries_use_only_exported_metrics(render: Any) -> None:
    rules = alert_rules(render(SCENARIOS["cluster+monitoring"]))
    assert {"CPTForgettingThresholdNear", "CPTRunStalled", "CPTCheckpointUploadFailing"} <= set(rules)
    assert {name: unknown_metrics(r["expr"]) for name, r in rules.items() if unknown_metrics(r["expr"])} == {}
    assert "cpt_general_regression_ratio" in metric_names(rules["CPTForgettingThresholdNear"]["expr"])
    assert "cpt_step" in metric_names(rules["CPTRunStalled"]["expr"])
    assert "cpt_checkpoint_upload_failures_total" in metric_names(rules["CPTCheckpointUploadFailing"]["expr"])


def test_alert_thresholds_follow_values(render: Any) -> None:
    rules = alert_rules(render({"monitoring": {"enabled": True, "prometheusRule": {"forgettingThreshold": 0.05, "forgettingNearFraction": 0.5, "stalledFor": "1h"}}}))
    near = rules["CPTForgettingThresholdNear"]["expr"]
    assert "> 0.025" in near and "<= 0.05" in near
    assert "changes(cpt_step[1h])" in rules["CPTRunStalled"]["expr"]
    assert "{{ $labels.run }}" in rules["CPTRunStalled"]["annotations"]["summary"]  # left for Prometheus


def test_dashboard_configmap_carries_the_dashboard_for_the_grafana_sidecar(render: Any) -> None:
    objects = render({"monitoring": {"enabled": True, "dashboard": {"namespace": "grafana", "annotations": {"grafana_folder": "CPT"}}}})
    (cm,) = [o for o in find(objects, "ConfigMap") if "cpt-runs.json" in o.get("data", {})]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "CPT"}
    assert json.loads(cm["data"]["cpt-runs.json"]) == dashboard()


def trainer_pod_labels(role: str) -> dict[str, str]:
    """Labels the operator puts on a trainer pod (render/names.py and render/pytorchjob.py)."""
    from cpt_operator.render import names

    labels = names.run_labels("team-a", "legal", "trainer")
    labels[names.LABEL_RUN_UID] = "uid-of-the-run"
    labels["cpt.dev/replica-type"] = role
    return labels


@pytest.mark.parametrize("scenario", ["cluster+monitoring", "namespaces+monitoring"])
def test_podmonitor_selects_the_master_trainer_pod_of_every_watched_namespace(scenario: str, render: Any) -> None:
    pm = one(render(SCENARIOS[scenario]), "PodMonitor")
    selector = pm["spec"]["selector"]

    def selects(labels: dict[str, str]) -> bool:
        ok = all(labels.get(k) == v for k, v in selector["matchLabels"].items())
        for e in selector.get("matchExpressions", []):
            ok = ok and (e["key"] in labels if e["operator"] == "Exists" else False)
        return ok

    assert selects(trainer_pod_labels("master"))
    assert not selects(trainer_pod_labels("worker"))
    from cpt_operator.render import names

    assert not selects(names.corpus_labels("team-a", "contracts"))
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is False  # identity from discovery (issue 12)
    if scenario.startswith("cluster"):
        assert pm["spec"]["namespaceSelector"] == {"any": True}
    else:
        assert pm["spec"]["namespaceSelector"] == {"matchNames": SCENARIOS[scenario]["rbac"]["watchNamespaces"]}


def test_servicemonitor_selects_the_operator_metrics_service(render: Any) -> None:
    objects = render(SCENARIOS["cluster+monitoring"])
    sm = one(objects, "ServiceMonitor")
    service = one(objects, "Service")
    assert all(service["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    deployment = one(objects, "Deployment")
    assert all(deployment["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
