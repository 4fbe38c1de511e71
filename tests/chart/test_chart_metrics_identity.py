"""Security review, issue 12: the trainers' PodMonitor gives every series its run identity from
service discovery, never from what a pod exports, and the test Prometheus
(tests/support/loopback_servers.py) applies exactly the chart's relabelings."""

from __future__ import annotations

from typing import Any

import pytest

from chart_support import SCENARIOS, find, one
from loopback_servers import PODMONITOR_HONOR_LABELS, PODMONITOR_RELABELINGS, relabel_config, sd_label_name
from cpt_operator.control.prometheus import IDENTITY_LABELS
from cpt_operator.labels import LABEL_RUN, LABEL_RUN_UID


def endpoint_of(render: Any, scenario: str) -> dict[str, Any]:
    (endpoint,) = one(render(SCENARIOS[scenario]), "PodMonitor")["spec"]["podMetricsEndpoints"]
    return endpoint


@pytest.mark.parametrize("scenario", ["cluster+monitoring", "namespaces+monitoring"])
def test_honor_labels_is_false_and_identity_comes_from_discovery(scenario: str, render: Any) -> None:
    endpoint = endpoint_of(render, scenario)
    assert endpoint["honorLabels"] is False
    by_target = {r["targetLabel"]: r for r in endpoint["relabelings"] if r.get("action") == "replace"}
    assert set(IDENTITY_LABELS) <= set(by_target)  # every label the operator selects by
    assert by_target["namespace"]["sourceLabels"] == ["__meta_kubernetes_namespace"]
    assert by_target["run"]["sourceLabels"] == [f"__meta_kubernetes_pod_label_{sd_label_name(LABEL_RUN)}"]
    assert by_target["run_uid"]["sourceLabels"] == [f"__meta_kubernetes_pod_label_{sd_label_name(LABEL_RUN_UID)}"]
    # A pod without both identity labels (non-empty) is not scraped at all.
    keep = [r for r in endpoint["relabelings"] if r.get("action") == "keep"]
    assert keep == [{"sourceLabels": [f"__meta_kubernetes_pod_label_{sd_label_name(LABEL_RUN)}",
                                      f"__meta_kubernetes_pod_label_{sd_label_name(LABEL_RUN_UID)}"],
                     "regex": ".+;.+", "action": "keep"}]  # fmt: skip
    assert endpoint["relabelings"].index(keep[0]) == 0
    selector = one(render(SCENARIOS[scenario]), "PodMonitor")["spec"]["selector"]
    assert {"key": LABEL_RUN_UID, "operator": "Exists"} in selector["matchExpressions"]


def test_the_test_prometheus_applies_exactly_the_charts_relabelings(render: Any) -> None:
    endpoint = endpoint_of(render, "cluster+monitoring")
    assert endpoint["relabelings"] == PODMONITOR_RELABELINGS
    assert endpoint["honorLabels"] is PODMONITOR_HONOR_LABELS
    assert relabel_config(PODMONITOR_RELABELINGS[1]) == {
        "source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace", "action": "replace"}  # fmt: skip


def test_no_monitor_of_the_chart_honors_exported_labels(render: Any) -> None:
    """The operator's own ServiceMonitor scrapes only the operator; no monitor keeps a target's
    exported labels over the discovered ones."""
    objects = render(SCENARIOS["cluster+monitoring"])
    monitors = find(objects, "PodMonitor") + find(objects, "ServiceMonitor")
    assert len(monitors) == 2
    for monitor in monitors:
        for endpoint in monitor["spec"].get("podMetricsEndpoints", []) + monitor["spec"].get("endpoints", []):
            assert endpoint.get("honorLabels", False) is False, monitor["metadata"]["name"]


def test_operator_pods_carry_the_run_uid_label() -> None:
    """The label the PodMonitor reads is on every pod the operator renders for a run."""
    from pathlib import Path

    from cpt_operator.api.resources import load_manifests
    from cpt_operator.render.pytorchjob import RunInputs, render_pytorchjob
    from cpt_operator.settings import OperatorSettings

    repo = Path(__file__).resolve().parents[2]
    res = {r.kind: r for r in load_manifests([repo / "examples" / "legal-cpt"])}
    corpora = {r.name: r.spec for r in load_manifests([repo / "examples" / "legal-cpt"]) if r.kind == "Corpus"}
    settings = OperatorSettings()
    spec = res["CPTRun"].spec
    pool = next(p for p in settings.node_pools if p.name == spec.resources.node_pool) if settings.node_pools else None
    if pool is None:
        pytest.skip("no node pool in the default settings")
    inputs = RunInputs("legal-team", res["CPTRun"].name, "uid-123", spec, corpora, res["CheckpointPolicy"].spec)
    job = render_pytorchjob(inputs, settings, pool, False, "{}")
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        labels = replica["template"]["metadata"]["labels"]
        assert labels[LABEL_RUN_UID] == "uid-123" and labels[LABEL_RUN] == res["CPTRun"].name
