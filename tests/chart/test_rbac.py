"""The RBAC the chart renders is exactly what the operator's code uses (cpt_operator.rbac.RULES),
in both modes, and least privilege holds."""

from __future__ import annotations

import importlib
from typing import Any

import pytest
import yaml

from chart_support import CHART_DIR, RELEASE_NAMESPACE, SCENARIOS, TENANTS, find, load_sync_module, one

Triple = tuple[str, str, str]


def operator_rules(tenant: bool | None = None) -> list[dict[str, Any]]:
    # The single source: the operator module that lists every (apiGroups, resources, verbs) its
    # code calls. Imported, not skipped: the chart must not ship rules nobody checked.
    # `tenant`: only the rules that reach a tenant's data (True) or only the others (False).
    rules = importlib.import_module("cpt_operator.rbac").RULES
    return [SYNC.rule_dict(r) for r in rules if tenant is None or r.tenant == tenant]


def triples(rules: list[dict[str, Any]]) -> set[Triple]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def operator_bound(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """Roles/ClusterRoles bound to the operator's ServiceAccount."""
    binding_kind = {"ClusterRole": "ClusterRoleBinding", "Role": "RoleBinding"}[kind]
    sa = one(objects, "ServiceAccount")["metadata"]["name"]
    out = []
    for binding in find(objects, binding_kind):
        if any(s["kind"] == "ServiceAccount" and s["name"] == sa and s["namespace"] == RELEASE_NAMESPACE for s in binding["subjects"]):
            ns = binding["metadata"].get("namespace")
            ref = binding["roleRef"]
            out.append(one(objects, ref["kind"], name=ref["name"], **({"namespace": ns} if ns and ref["kind"] == "Role" else {})))
    return out


SYNC = load_sync_module()
CLUSTER_SCOPED = SYNC.CLUSTER_SCOPED
CLUSTER_WIDE_ONLY = SYNC.CLUSTER_WIDE_ONLY


def test_cluster_mode_by_default_reaches_no_tenant_data(render: Any) -> None:
    """The default install watches every namespace but may read no Secret, write no ConfigMap and
    create no Job or PyTorchJob anywhere until the platform opts a namespace in."""
    objects = render(SCENARIOS["cluster"])
    (role,) = operator_bound(objects, "ClusterRole")
    assert triples(role["rules"]) == triples(operator_rules(tenant=False))
    granted = triples(role["rules"])
    assert not [t for t in granted if t[1] in ("secrets", "configmaps", "pods")]
    assert not [t for t in granted if t[2] in ("create", "delete") and t[1] in ("jobs", "pytorchjobs")]
    assert operator_bound(objects, "Role") == [] and find(objects, "RoleBinding") == []


def test_cluster_mode_grants_tenant_data_only_in_the_opted_in_namespaces(render: Any) -> None:
    objects = render(SCENARIOS["cluster+tenants"])
    (role,) = operator_bound(objects, "ClusterRole")
    assert triples(role["rules"]) == triples(operator_rules(tenant=False))
    bindings = [b for b in find(objects, "RoleBinding") if b["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == TENANTS
    for binding in bindings:
        (access,) = [r for r in find(objects, "ClusterRole") if r["metadata"]["name"] == binding["roleRef"]["name"]]
        assert triples(access["rules"]) == triples(operator_rules(tenant=True))


def test_cluster_mode_with_every_namespace_is_one_clusterrole_of_all_rules(render: Any) -> None:
    objects = render(SCENARIOS["cluster+all-namespaces"])
    (role,) = operator_bound(objects, "ClusterRole")
    assert triples(role["rules"]) == triples(operator_rules())
    assert find(objects, "RoleBinding") == []


@pytest.mark.parametrize("values,message", [
    ({"rbac": {"tenantNamespaces": ["*", "team-a"]}}, "already means every namespace"),
    ({"rbac": {"scope": "namespaces", "watchNamespaces": ["team-a"], "tenantNamespaces": ["team-b"]}}, "must be empty"),
])  # fmt: skip
def test_tenant_namespaces_that_contradict_themselves_fail_the_install(render: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        render(values)


def test_namespaced_mode_roles_hold_the_namespaced_rules_in_each_namespace(render: Any) -> None:
    objects = render(SCENARIOS["namespaces"])
    expected = triples(operator_rules())
    namespaced = {t for t in expected if (t[0], t[1].split("/")[0]) not in CLUSTER_SCOPED}
    cluster = {t for t in expected if (t[0], t[1].split("/")[0]) in CLUSTER_SCOPED - CLUSTER_WIDE_ONLY}
    roles = operator_bound(objects, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == TENANTS
    for role in roles:
        assert triples(role["rules"]) == namespaced  # the watched namespaces are its tenant namespaces
    (cluster_role,) = operator_bound(objects, "ClusterRole")
    assert triples(cluster_role["rules"]) == cluster
    # Nothing granted cluster-wide that a namespaced operator does not need.
    assert not {t for t in triples(cluster_role["rules"]) if (t[0], t[1].split("/")[0]) not in CLUSTER_SCOPED}


def test_rules_file_is_in_sync_with_the_operator_rules() -> None:
    assert (CHART_DIR / "files" / "rbac-rules.yaml").read_text(encoding="utf-8") == SYNC.render_rules_file(SYNC.operator_rules())


@pytest.mark.parametrize("scenario", ["cluster", "cluster+tenants", "cluster+all-namespaces", "namespaces"])
def test_least_privilege(scenario: str, render: Any) -> None:
    objects = render(SCENARIOS[scenario])
    granted = set()
    for kind in ("ClusterRole", "Role"):
        for role in operator_bound(objects, kind):
            granted |= triples(role["rules"])
    assert not [t for t in granted if "*" in t], "no wildcards"
    assert {t for t in granted if t[1] == "secrets"} <= {("", "secrets", "get")}
    assert not [t for t in granted if t[1] in ("pods", "nodes", "serviceaccounts") and t[2] not in ("get", "list", "watch")]
    assert not [t for t in granted if t[0].startswith("rbac.authorization.k8s.io")], "the operator grants nothing"
    assert not [t for t in granted if t[2] in ("escalate", "bind", "impersonate")]


def test_tenant_roles_aggregate_into_edit_and_view_and_never_status_writes(render: Any) -> None:
    objects = render()
    aggregated = "rbac.authorization.k8s.io/aggregate-to-"
    tenant = [r for r in find(objects, "ClusterRole") if any(k.startswith(aggregated) for k in r["metadata"].get("labels") or {})]
    labels = {k for r in tenant for k in r["metadata"]["labels"] if k.startswith("rbac.authorization.k8s.io/aggregate-to-")}
    assert labels == {"rbac.authorization.k8s.io/aggregate-to-admin", "rbac.authorization.k8s.io/aggregate-to-edit", "rbac.authorization.k8s.io/aggregate-to-view"}
    for role in tenant:
        for g, r, v in triples(role["rules"]):
            assert g == "cpt.dev"
            assert not (r.endswith("/status") and v not in ("get", "list", "watch"))
    assert not [r for r in find(render({"rbac": {"aggregateToDefaultRoles": False}}), "ClusterRole") if "tenant" in r["metadata"]["name"]]


def test_split_puts_each_resource_where_kubernetes_scopes_it() -> None:
    split = SYNC.split_rules(
        [
            {"apiGroups": ["kopf.dev"], "resources": ["clusterkopfpeerings", "kopfpeerings"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["namespaces", "configmaps"], "verbs": ["get"]},
        ]
    )
    assert triples(split["namespaced"]) == {("kopf.dev", "kopfpeerings", "get"), ("kopf.dev", "kopfpeerings", "patch"), ("", "configmaps", "get")}
    assert triples(split["clusterWideOnly"]) == {("kopf.dev", "clusterkopfpeerings", "get"), ("kopf.dev", "clusterkopfpeerings", "patch")}
    assert triples(split["cluster"]) == {("", "namespaces", "get")}
    assert yaml.safe_load(SYNC.render_rules_file([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]))["namespaced"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    ]
