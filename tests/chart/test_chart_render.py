"""The chart rendered and linted by the real Helm engine, every object checked against its schema."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import pytest
import yaml

from chart_support import CHART_DIR, RELEASE_NAMESPACE, SCENARIOS, TENANTS, find, one

MONITORING_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint_strict_has_no_findings(scenario: str) -> None:
    report = helm.lint(CHART_DIR, SCENARIOS[scenario], strict=True, namespace=RELEASE_NAMESPACE, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_rendered_object_validates_against_its_schema(scenario: str, render: Any, validate_object: Any) -> None:
    objects = render(SCENARIOS[scenario])
    used = {}
    for obj in objects:
        used[obj["kind"]] = validate_object(obj)
    monitoring = "monitoring" in scenario
    assert {k for k, v in used.items() if v == "custom"} == (MONITORING_KINDS if monitoring else set())
    assert {"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Service"} <= {
        k for k, v in used.items() if v == "kubernetes"
    }
    peering_kind = "ClusterKopfPeering" if scenario.startswith("cluster") else "KopfPeering"
    assert used.get(peering_kind) == "crd"


def test_chart_crds_validate_as_customresourcedefinitions(chart: Any, validate_object: Any) -> None:
    kinds = []
    for crd_file in chart.crds:
        for crd in yaml.safe_load_all(crd_file["data"]):
            assert validate_object(crd) == "kubernetes"
            kinds.append(crd["spec"]["names"]["kind"])
    assert sorted(kinds) == ["CPTRun", "CheckpointPolicy", "ClusterKopfPeering", "Corpus", "KopfPeering"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_monitoring_objects_only_when_enabled(scenario: str, render: Any) -> None:
    objects = render(SCENARIOS[scenario])
    kinds = {o["kind"] for o in objects}
    dashboards = [o for o in find(objects, "ConfigMap") if "cpt-runs.json" in o.get("data", {})]
    if "monitoring" in scenario:
        assert MONITORING_KINDS <= kinds
        assert len(dashboards) == 1
    else:
        assert not (MONITORING_KINDS & kinds)
        assert dashboards == []


def test_monitoring_parts_can_be_switched_off_one_by_one(render: Any) -> None:
    objects = render({"monitoring": {"enabled": True, "podMonitor": {"enabled": False}, "dashboard": {"enabled": False}}})
    kinds = {o["kind"] for o in objects}
    assert "PodMonitor" not in kinds and {"ServiceMonitor", "PrometheusRule"} <= kinds
    assert not [o for o in find(objects, "ConfigMap") if "cpt-runs.json" in o.get("data", {})]


# --------------------------------------------------------------------------- the Deployment


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(objects, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def test_deployment_runs_two_peered_replicas(render: Any) -> None:
    objects = render()
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    c = container(objects)
    assert c["command"] == ["cpt-operator"]
    assert "--standalone" not in c["args"] and "--all-namespaces" in c["args"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in c["args"]
    # cpt-operator derives each replica's peering priority from its pod name.
    (pod_name,) = [e for e in c["env"] if e["name"] == "POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The peering object must exist (peering is mandatory) under the name the operator uses.
    from cpt_operator.handlers.context import Tuning

    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == Tuning().peering_name
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_deployment_args_parse_with_the_operators_own_parser(render: Any) -> None:
    from cpt_operator.run import build_parser

    for scenario, values in SCENARIOS.items():
        args = build_parser().parse_args(container(render(values))["args"])
        assert args.liveness == "http://0.0.0.0:8081/healthz"
        assert args.all_namespaces == scenario.startswith("cluster")
        assert args.namespace == ([] if scenario.startswith("cluster") else TENANTS)
    args = build_parser().parse_args(container(render({"replicaCount": 1, "peering": {"enabled": False}, "verbose": True}))["args"])
    assert args.standalone and args.verbose


def test_namespaced_mode_watches_and_peers_in_each_listed_namespace(render: Any) -> None:
    objects = render(SCENARIOS["namespaces"])
    args = container(objects)["args"]
    assert [a for a in args if a.startswith("--namespace=")] == [f"--namespace={n}" for n in TENANTS]
    assert "--all-namespaces" not in args
    assert sorted(p["metadata"]["namespace"] for p in find(objects, "KopfPeering")) == TENANTS
    assert {p["metadata"]["name"] for p in find(objects, "KopfPeering")} == {"cpt-operator"}
    assert find(objects, "ClusterKopfPeering") == []


def test_single_replica_may_run_standalone(render: Any) -> None:
    objects = render({"replicaCount": 1, "peering": {"enabled": False}})
    c = container(objects)
    assert c["command"] == ["cpt-operator"]
    assert "--standalone" in c["args"]
    assert find(objects, "ClusterKopfPeering") == [] and find(objects, "PodDisruptionBudget") == []


def test_deployment_is_locked_down(render: Any) -> None:
    objects = render()
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert env["CPT_OPERATOR_SETTINGS_FILE"] in mounts


def test_settings_change_rolls_the_pods(render: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        return one(render(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]

    assert checksum({}) != checksum({"settings": {"backoffLimit": 7}})
    assert checksum({}) == checksum({"podLabels": {"a": "b"}})


def test_prometheus_token_and_ca_are_mounted_where_the_settings_point(render: Any) -> None:
    values = {"settings": {"prometheus": {"url": "https://prometheus.monitoring:9091", "bearerTokenSecret": {"name": "prom", "key": "token"}, "caConfigMap": {"name": "prom-ca", "key": "ca.crt"}}}}
    objects = render(values)
    settings = yaml.safe_load(one(objects, "ConfigMap", name="cpt-cpt-operator-settings")["data"]["settings.yaml"])
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    assert settings["prometheus_bearer_token_file"] == mounts["prometheus-token"] + "/token"
    assert settings["prometheus_ca_file"] == mounts["prometheus-ca"] + "/ca.crt"
    volumes = {v["name"]: v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["prometheus-token"]["secret"]["secretName"] == "prom"
    assert volumes["prometheus-ca"]["configMap"]["name"] == "prom-ca"


# --------------------------------------------------------------------------- names and failures


def test_names_are_truncated_to_63_characters(render: Any) -> None:
    release = "a-very-long-release-name-for-a-platform-team-that-likes-long-names"
    objects = render(SCENARIOS["namespaces+monitoring"], name=release[:53])
    for obj in objects:
        assert len(obj["metadata"]["name"]) <= 63, obj["metadata"]["name"]
        assert not obj["metadata"]["name"].endswith("-")
        for value in obj["metadata"].get("labels", {}).values():
            assert len(value) <= 63


INVALID = {
    "namespaces mode without namespaces": ({"rbac": {"scope": "namespaces"}}, "needs at least one namespace"),
    "cluster mode with namespaces": ({"rbac": {"watchNamespaces": ["team-a"]}}, "must be empty when rbac.scope is"),
    "replicas without peering": ({"replicaCount": 2, "peering": {"enabled": False}}, "replicaCount > 1 needs peering.enabled"),
    "duplicate pool names": (
        {"settings": {"nodePools": [{"name": "a100"}, {"name": "a100"}]}},
        "two pools have the same name",
    ),
    "token without url": (
        {"settings": {"prometheus": {"bearerTokenSecret": {"name": "p", "key": "t"}}}},
        "need settings.prometheus.url",
    ),
    "token secret without key": (
        {"settings": {"prometheus": {"url": "http://p:9090", "bearerTokenSecret": {"name": "p"}}}},
        "needs both name and key",
    ),
    "service monitor without service": (
        {"monitoring": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
        "monitoring.serviceMonitor needs metrics.service.enabled",
    ),
}


@pytest.mark.parametrize("case", INVALID)
def test_invalid_values_fail_with_a_clear_message(case: str, chart: Any) -> None:
    values, message = INVALID[case]
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        chart.render(values, name="cpt", namespace=RELEASE_NAMESPACE)


SCHEMA_INVALID = {
    "unknown top-level key": {"replicas": 2},
    "unknown rbac scope": {"rbac": {"scope": "tenant"}},
    "bad namespace name": {"rbac": {"scope": "namespaces", "watchNamespaces": ["Team_A"]}},
    "unknown settings key": {"settings": {"trainer_image": "x"}},
    "unknown node pool key": {"settings": {"nodePools": [{"name": "a", "gpus": 8}]}},
    "no node pools": {"settings": {"nodePools": []}},
    "bad scrape interval": {"monitoring": {"podMonitor": {"interval": "fast"}}},
}


@pytest.mark.parametrize("case", SCHEMA_INVALID)
def test_values_schema_rejects(case: str, chart: Any) -> None:
    with pytest.raises(helm.HelmValuesError):
        chart.validate_schema(SCHEMA_INVALID[case])


def test_values_schema_accepts_the_defaults_and_every_scenario(chart: Any) -> None:
    chart.validate_schema({})
    for values in SCENARIOS.values():
        chart.validate_schema(values)


# --------------------------------------------------------------------------- values.yaml docs


def undocumented_leaf_keys(text: str) -> list[str]:
    """Leaf keys of values.yaml with no `# --` comment on themselves or on an ancestor key
    (helm-docs: a documented key documents its subtree). List items are their key's data."""
    missing: list[str] = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment_block: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped:
            comment_block = []
            continue
        if stripped.startswith("#"):
            comment_block.append(stripped)
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"^([A-Za-z0-9_.\-/\"]+):(\s|$)", stripped)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if stripped.startswith("- ") or not match:
            comment_block = []
            continue
        if any(s[0] < indent and s[2] is None for s in stack):
            comment_block = []
            continue
        key = match.group(1)
        documented = any(c.startswith("# --") for c in comment_block) or any(s[2] for s in stack)
        rest = stripped[len(match.group(0)) :].strip()
        next_lines = [l for l in lines[i + 1 :] if l.strip() and not l.strip().startswith("#")]
        is_parent = not rest and next_lines and (len(next_lines[0]) - len(next_lines[0].lstrip())) > indent
        if is_parent and next_lines[0].strip().startswith("- "):
            is_parent = False  # a list value: a leaf
        if not is_parent and not documented:
            missing.append(".".join([s[1] for s in stack] + [key]))
        stack.append((indent, key, True if documented else (False if is_parent else None)))
        comment_block = []
    return missing


def test_every_values_key_has_a_helm_docs_comment() -> None:
    assert undocumented_leaf_keys((CHART_DIR / "values.yaml").read_text(encoding="utf-8")) == []


def test_the_helm_docs_check_finds_an_undocumented_key() -> None:
    text = "image:\n  # -- documented\n  repository: x\n  tag: y\n# -- ok\nresources:\n  limits:\n    cpu: 1\n"
    assert undocumented_leaf_keys(text) == ["image.tag"]


def test_every_values_key_is_in_the_schema(chart: Any) -> None:
    schema = chart.schema

    def walk(values: Any, node: dict[str, Any], path: str) -> list[str]:
        if not isinstance(values, dict) or node.get("type") != "object" or "properties" not in node:
            return []
        out = []
        for key, value in values.items():
            if key not in node["properties"]:
                out.append(f"{path}{key}")
            else:
                out += walk(value, node["properties"][key], f"{path}{key}.")
        return out

    assert walk(chart.values, schema, "") == []


def test_validation_catches_a_typo_in_each_schema_set(render: Any, validate_object: Any) -> None:
    objects = render(SCENARIOS["cluster+monitoring"])
    for kind, corrupt in (
        ("Deployment", lambda o: o["spec"].__setitem__("replica", 2)),
        ("PodMonitor", lambda o: o["spec"]["podMetricsEndpoints"][0].__setitem__("portName", "metrics")),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].__setitem__("for", "five minutes")),
        ("ClusterKopfPeering", lambda o: o.__setitem__("status", "not-an-object")),
    ):
        obj = yaml.safe_load(yaml.safe_dump(one(objects, kind)))
        corrupt(obj)
        with pytest.raises(Exception):
            validate_object(obj)
