"""The CRDs are valid, structural apiextensions.k8s.io/v1 objects, generated from the models."""

from __future__ import annotations

import re

import celpy
import kubernetes_validate
import pytest

import api_helpers
from api_helpers import CRD_DIR, load_crds
from cpt_operator.api import crdgen
from cpt_operator.api.validation import crd_schema, validate_object


def test_committed_crds_equal_the_generated_ones(tmp_path):
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    for info in crdgen.KINDS:
        generated = (tmp_path / info.file_name).read_text()
        committed = (CRD_DIR / info.file_name).read_text()
        assert committed == generated, f"{info.file_name} is stale: run python -m cpt_operator.api.crdgen"


def test_check_mode_reports_a_stale_crd(tmp_path):
    crdgen.main(["--out", str(tmp_path)])
    (tmp_path / crdgen.KINDS[0].file_name).write_text("stale")
    assert crdgen.main(["--check", "--out", str(tmp_path)]) == 1


@pytest.mark.parametrize("kind", ["Corpus", "CheckpointPolicy", "CPTRun"])
def test_crd_validates_against_the_kubernetes_schema(crds, kind):
    kubernetes_validate.validate(crds[kind], kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_validate_rejects_a_broken_crd(crds):
    broken = {**crds["Corpus"], "spec": {**crds["Corpus"]["spec"], "scopee": "Namespaced"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def _walk(node: dict, path: str):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def structural_problems(schema: dict) -> list[str]:
    """The structural-schema rules of apiextensions.k8s.io/v1 that matter for our schemas."""
    problems = []
    for path, node in _walk(schema, ""):
        special = node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
        if "type" not in node and not special:
            problems.append(f"{path}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: anyOf outside int-or-string")
        for forbidden in ("$ref", "oneOf", "not", "definitions", "additionalItems", "dependencies"):
            if forbidden in node:
                problems.append(f"{path}: {forbidden} is not allowed in a structural schema")
    return problems


@pytest.mark.parametrize("kind", ["Corpus", "CheckpointPolicy", "CPTRun"])
def test_schema_is_structural(crds, kind):
    schema = crd_schema(crds[kind], "v1alpha1")
    assert structural_problems(schema) == []


def test_structural_check_catches_a_missing_type():
    assert structural_problems({"type": "object", "properties": {"a": {"description": "x"}}}) == [".a: no type"]


@pytest.mark.parametrize("kind", ["Corpus", "CheckpointPolicy", "CPTRun"])
def test_every_field_has_a_description(crds, kind):
    schema = crd_schema(crds[kind], "v1alpha1")
    missing = [
        path
        for path, node in _walk(schema, "")
        if path.count(".") >= 2 and not path.endswith("[]") and not node.get("description")
    ]
    assert missing == []


@pytest.mark.parametrize("kind", ["Corpus", "CheckpointPolicy", "CPTRun"])
def test_defaults_are_valid_values_of_their_own_nodes(crds, kind):
    schema = crd_schema(crds[kind], "v1alpha1")
    checked = 0
    for path, node in _walk(schema, ""):
        if "default" in node:
            _, errors = validate_object(node["default"], {k: v for k, v in node.items() if k != "default"})
            assert errors == [], f"{path}: default {node['default']!r}: {errors}"
            checked += 1
    assert checked > 10


@pytest.mark.parametrize("kind", ["Corpus", "CheckpointPolicy", "CPTRun"])
def test_cel_rules_compile_and_field_paths_exist(crds, kind):
    schema = crd_schema(crds[kind], "v1alpha1")
    env = celpy.Environment()
    rules = 0
    for path, node in _walk(schema, ""):
        for rule in node.get("x-kubernetes-validations", []):
            env.compile(rule["rule"])
            rules += 1
            target = node
            for part in rule.get("fieldPath", "").strip(".").split("."):
                if part:
                    assert part in target.get("properties", {}), f"{path}: fieldPath {rule['fieldPath']} does not exist"
                    target = target["properties"][part]
            assert rule["message"]
    assert rules >= 1


def test_cptrun_status_subresource_printer_columns_short_names_category(crds):
    for kind, crd in crds.items():
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert crd["spec"]["names"]["categories"] == ["cpt"]
        assert crd["spec"]["names"]["shortNames"]
        assert crd["spec"]["scope"] == "Namespaced"
        conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert set(conditions["items"]["required"]) == {"type", "status", "reason", "lastTransitionTime"}
    columns = {c["name"]: c["jsonPath"] for c in crds["CPTRun"]["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase"
    assert columns["Step"] == ".status.progress.display"
    assert columns["Domain-PPL"] == ".status.metrics.domainPerplexity"
    assert columns["General-Regr"] == ".status.metrics.generalRegression"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_printer_column_paths_exist_in_the_schema(crds):
    for kind, crd in crds.items():
        version = crd["spec"]["versions"][0]
        root = version["schema"]["openAPIV3Schema"]
        for column in version["additionalPrinterColumns"]:
            if column["jsonPath"].startswith(".metadata"):
                continue
            node = root
            for part in re.findall(r"\.(\w+)", column["jsonPath"]):
                assert part in node.get("properties", {}), f"{kind}: {column['jsonPath']}"
                node = node["properties"][part]


def test_status_keeps_kopf_progress_from_being_pruned(crds):
    for crd in crds.values():
        status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["properties"]["kopf"]["x-kubernetes-preserve-unknown-fields"] is True


def test_loading_fails_loudly_without_crds(tmp_path, monkeypatch):
    monkeypatch.setattr(api_helpers, "CRD_DIR", tmp_path)
    with pytest.raises(RuntimeError, match="expected 3 CRDs"):
        load_crds()
