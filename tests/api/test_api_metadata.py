"""metadata is checked with the API server's own rules: names and namespaces, label keys and
values, annotation keys and their total size, unknown fields; and the document-level
mistakes (a YAML list, a stray values.yaml, `kind: [CPTRun]`, `spec: null`, `name: null`)
are one clear line each, naming file, document and field."""

from __future__ import annotations

import copy

import pytest
from api_helpers import assert_one_clear_line, cpt_plan, dump, minimal_docs

from cpt_operator.api.resources import InvalidResource, parse_resource


def _run() -> dict:
    return minimal_docs()["CPTRun"]


def _errors(doc: dict) -> dict[str, str]:
    with pytest.raises(InvalidResource) as info:
        parse_resource(doc)
    return {e.path: e.message for e in info.value.errors}


@pytest.mark.parametrize(
    "field,value,path",
    [
        ("name", 123, "metadata.name"),
        ("name", None, "metadata.name"),
        ("name", "", "metadata.name"),
        ("name", "Llama_Run", "metadata.name"),
        ("name", "a" * 64, "metadata.name"),
        ("namespace", 'team"} or vector(1) #', "metadata.namespace"),
        ("namespace", "Team", "metadata.namespace"),
        ("namespace", "a" * 64, "metadata.namespace"),
        ("namespace", 7, "metadata.namespace"),
        ("labels", {"team": 'x"y'}, "metadata.labels['team']"),
        ("labels", {"team": "a\\b"}, "metadata.labels['team']"),
        ("labels", {"team": "line\nbreak"}, "metadata.labels['team']"),
        ("labels", {"team": "v" * 64}, "metadata.labels['team']"),
        ("labels", {"team": 3}, "metadata.labels['team']"),
        ("labels", {"bad key": "x"}, "metadata.labels['bad key']"),
        ("labels", {"Example.COM/x": "y"}, "metadata.labels['Example.COM/x']"),
        ("labels", {"/x": "y"}, "metadata.labels['/x']"),
        ("labels", {"k" * 64: "y"}, "metadata.labels['" + "k" * 64 + "']"),
        ("labels", ["a"], "metadata.labels"),
        ("annotations", {"note": 5}, "metadata.annotations['note']"),
        ("annotations", {"a b": "x"}, "metadata.annotations['a b']"),
        ("annotations", {"big": "x" * (256 * 1024)}, "metadata.annotations"),
        ("nmae", "typo", "metadata.nmae"),
    ],
)
def test_metadata_is_checked_like_the_api_server(field, value, path):
    doc = _run()
    doc["metadata"][field] = value
    errors = _errors(doc)
    assert path in errors, errors
    assert len(errors[path]) < 300


def test_valid_metadata_passes():
    doc = _run()
    doc["metadata"].update(
        namespace="legal-team",
        labels={"app.kubernetes.io/part-of": "cpt", "team": "legal", "empty": "", "x_y.z-1": "A-b_c.9"},
        annotations={"argocd.argoproj.io/sync-wave": "0", "note": 'free text: "quotes", \\ and\nnewlines'},
        uid="0b9c", resourceVersion="1", generation=2, finalizers=["cpt.dev/checkpoints"],
    )
    assert parse_resource(doc).namespace == "legal-team"


def test_annotations_just_under_the_limit_pass():
    doc = _run()
    doc["metadata"]["annotations"] = {"big": "x" * (256 * 1024 - 10)}
    parse_resource(doc)


def test_metadata_not_a_mapping():
    doc = _run()
    doc["metadata"] = ["docs-cpt"]
    assert "must be an object" in _errors(doc)["metadata"]


def test_every_metadata_problem_is_reported():
    doc = _run()
    doc["metadata"].update(namespace="Bad_NS", labels={"team": "a b"})
    assert {"metadata.namespace", "metadata.labels['team']"} <= set(_errors(doc))


# --------------------------------------------------------------------------- through the CLI


def test_injection_shaped_namespace_through_the_cli(tmp_path):
    docs = minimal_docs()
    docs["CPTRun"]["metadata"]["namespace"] = 'team"} or vector(1) #'
    path = tmp_path / "ns.yaml"
    path.write_text(dump(docs))
    assert_one_clear_line(cpt_plan(path), "ns.yaml: document 3", "CPTRun 'docs-cpt'", "metadata.namespace", "DNS-1123 label")


def test_numeric_name_through_the_cli(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text(dump(minimal_docs()).replace("name: docs-cpt", "name: 123"))
    assert_one_clear_line(cpt_plan(path), "metadata.name", "must be a string")


@pytest.mark.parametrize(
    "content,expected",
    [
        ("- apiVersion: cpt.dev/v1alpha1\n  kind: Corpus\n", ["list.yaml: document 1", "must be a mapping", "not a list"]),
        ("replicaCount: 2\nimage:\n  tag: v1\n", ["list.yaml: document 1", "kind: is missing", "Helm values"]),
        ("apiVersion: cpt.dev/v1alpha1\nkind: [CPTRun]\nmetadata: {name: x}\nspec: {}\n", ["kind: is a list, not a string"]),
        ("apiVersion: cpt.dev/v1alpha1\nkind: {a: 1}\nmetadata: {name: x}\nspec: {}\n", ["kind: is an object, not a string"]),
        ("apiVersion: [cpt.dev/v1alpha1]\nkind: Corpus\nmetadata: {name: x}\nspec: {}\n", ["apiVersion", "is not served"]),
        ("apiVersion: cpt.dev/v1alpha1\nkind: Corpus\nmetadata: {name: x}\nspec: null\n", ["Corpus 'x': spec: is null", "expected an object"]),
        ("apiVersion: cpt.dev/v1alpha1\nkind: Corpus\nmetadata: {name: x}\nspec: [1]\n", ["Corpus 'x': spec: must be an object, not a list"]),
        ("apiVersion: cpt.dev/v1alpha1\nkind: Corpus\nmetadata: {name: null}\nspec: {}\n", ["Corpus (unnamed)", "metadata.name: required"]),
        ("apiVersion: cpt.dev/v1alpha1\nkind: Corpus\nmetadata: null\nspec: {}\n", ["metadata: must be an object"]),
        ("42\n", ["must be a mapping", "not 42"]),
    ],
)
def test_document_level_mistakes_are_one_line(tmp_path, content, expected):
    path = tmp_path / "list.yaml"
    path.write_text(content)
    result = cpt_plan(path)
    err = result.stderr.strip()
    assert result.returncode == 2 and "Traceback" not in err, err
    first = err.splitlines()[0]
    for text in expected:
        assert text in first, f"{text!r} not in {first!r}"


def test_a_stray_values_file_in_a_folder_names_it(tmp_path):
    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "cpt.yaml").write_text(dump(minimal_docs()))
    (folder / "values.yaml").write_text("replicaCount: 2\n")
    assert_one_clear_line(cpt_plan(folder), "values.yaml: document 1", "Helm values")


def test_parse_resource_on_odd_bodies_never_crashes():
    for body in ([], "x", None, 3, {"kind": ["CPTRun"]}, {"kind": {"a": 1}}, {"kind": "CPTRun", "apiVersion": 3}):
        with pytest.raises(InvalidResource):
            parse_resource(copy.deepcopy(body))  # type: ignore[arg-type]
