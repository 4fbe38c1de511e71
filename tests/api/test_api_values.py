"""Values that cannot work are refused (naming the field), or warned about where a run is
still meaningful: bucket names, outputs overlapping sources or each other, quantities,
script names, regular expressions (RE2, checked at admission), stop tokens, curriculum
order, evaluation intervals. Rules that can be CRD rules are in the CRDs too."""

from __future__ import annotations

import json

import pytest
import yaml
from api_helpers import CRD_DIR, REPO, assert_one_clear_line, cpt_plan, dump, minimal_docs

from cpt_operator.api.corpus import regex_problem
from cpt_operator.api.resources import InvalidResource, load_manifests, parse_resource


def _errors(doc: dict) -> dict[str, str]:
    with pytest.raises(InvalidResource) as info:
        parse_resource(doc)
    return {e.path: e.message for e in info.value.errors}


def _corpus() -> dict:
    return minimal_docs()["Corpus"]


def _policy() -> dict:
    return minimal_docs()["CheckpointPolicy"]


def _run() -> dict:
    return minimal_docs()["CPTRun"]


@pytest.mark.parametrize(
    "uri", ["s3://a..b/x", "s3://a.-b/x", "s3://a-.b/x", "s3://192.168.1.10/x", "s3://.ab/x", "s3://ab-/x", "s3://Ab/x", "s3://ab/x"]
)
def test_invalid_bucket_names_are_refused(uri):
    doc = _policy()
    doc["spec"]["storage"] = {"s3": {"uri": uri}}
    assert "spec.storage.s3.uri" in _errors(doc)


@pytest.mark.parametrize("uri", ["s3://abc/x", "s3://my.bucket-1/x/y/", "s3://a1b/x", "s3://legal-team-checkpoints/cpt"])
def test_valid_bucket_names_pass(uri):
    doc = _policy()
    doc["spec"]["storage"] = {"s3": {"uri": uri}}
    parse_resource(doc)


@pytest.mark.parametrize("path", ["raw/docs", "raw/docs/", "raw/docs/curated", "raw"])
def test_corpus_output_equal_to_or_inside_its_source_is_refused(path):
    doc = _corpus()
    doc["spec"]["output"] = {"pvc": {"claimName": "team-data", "path": path}}
    assert "spec.output" in _errors(doc)


def test_corpus_output_in_s3_inside_its_source_is_refused():
    doc = _corpus()
    doc["spec"]["sources"] = [{"location": {"s3": {"uri": "s3://data-bucket/raw"}}}]
    doc["spec"]["output"] = {"s3": {"uri": "s3://data-bucket/raw/curated"}}
    assert "sources[0]" in _errors(doc)["spec.output"]
    doc["spec"]["output"] = {"s3": {"uri": "s3://data-bucket/rawer"}}  # a sibling prefix, not inside
    parse_resource(doc)
    doc["spec"]["output"] = {"pvc": {"claimName": "other", "path": "raw/docs"}}  # another volume
    parse_resource(doc)


def test_two_corpora_writing_the_same_output_are_refused_by_plan(tmp_path):
    docs = minimal_docs()
    other = json.loads(json.dumps(docs["Corpus"]))
    other["metadata"]["name"] = "docs-b"
    other["spec"]["sources"][0]["location"]["pvc"]["path"] = "raw/other"
    other["spec"]["output"]["pvc"]["path"] = "curated/docs/b"  # inside the first one's output
    path = tmp_path / "two.yaml"
    path.write_text(dump([docs["Corpus"], other, docs["CheckpointPolicy"], docs["CPTRun"]]))
    assert_one_clear_line(cpt_plan(path), "Corpus default/docs", "spec.output", "Corpus default/docs-b")


@pytest.mark.parametrize("cpu", ["...", "1.2.3", ".", "two", "1..", "-1", "1e"])
def test_malformed_quantities_are_refused(cpu):
    doc = _corpus()
    doc["spec"]["resources"] = {"cpu": cpu}
    assert "Kubernetes quantity" in _errors(doc)["spec.resources.cpu"]


@pytest.mark.parametrize("cpu", ["2", "500m", "1.5", ".5", "1e3", "+4", 8])
def test_quantities_pass(cpu):
    doc = _corpus()
    doc["spec"]["resources"] = {"cpu": cpu, "memory": "8Gi"}
    parse_resource(doc)


def test_unknown_script_names_are_refused_and_known_ones_pass():
    doc = _corpus()
    doc["spec"]["curation"] = {"language": {"enabled": True, "scripts": ["Latin", "Klingon"]}}
    errors = _errors(doc)
    assert "Klingon" in errors["spec.curation.language.scripts[1]"]
    doc["spec"]["curation"]["language"]["scripts"] = ["Latin", "cyrillic", "Greek", "Han", "Arabic", "Devanagari", "Hangul"]
    parse_resource(doc)


@pytest.mark.parametrize(
    "regex,expected",
    [
        ("([", "not a valid RE2"),
        (r"(a)\1", "not a valid RE2"),  # a backreference: RE2 refuses it, it cannot backtrack
        (r"(?=\d)\d{9}", "not a valid RE2"),  # lookahead
        (r"\d*", "matches the empty string"),
        ("a|", "matches the empty string"),
    ],
)
def test_bad_national_id_regexes_are_refused_at_admission(regex, expected):
    doc = _corpus()
    doc["spec"]["curation"] = {"pii": {"nationalIds": [{"name": "x", "regex": regex}]}}
    assert expected in _errors(doc)["spec.curation.pii.nationalIds[0].regex"]


def test_good_regexes_pass():
    for regex in (r"\b\d{3}-\d{2}-\d{4}\b", r"[A-Z]{2}\d{6}[A-D]", r"(?i)ab[0-9]{7}"):
        assert regex_problem(regex) is None, regex


def test_an_uncompilable_regex_is_one_line_in_a_corpus_only_file_and_beside_a_run(tmp_path):
    docs = minimal_docs()
    docs["Corpus"]["spec"]["curation"] = {"pii": {"nationalIds": [{"name": "x", "regex": "(["}]}}
    only = tmp_path / "corpus.yaml"
    only.write_text(dump([docs["Corpus"]]))
    assert_one_clear_line(cpt_plan(only), "spec.curation.pii.nationalIds[0].regex", "RE2")
    full = tmp_path / "all.yaml"
    full.write_text(dump(docs))
    err = assert_one_clear_line(cpt_plan(full), "spec.curation.pii.nationalIds[0].regex")
    assert "re2.cc" not in err  # RE2's own logging is off


@pytest.mark.parametrize("tokens", [[" "], ["\t\n"], ["ok", "  "]])
def test_empty_or_blank_extension_tokens_are_refused(tokens):
    doc = _run()
    doc["spec"]["tokenizerExtension"] = {"enabled": True, "tokens": tokens}
    assert any(p.startswith("spec.tokenizerExtension.tokens[") for p in _errors(doc))


@pytest.mark.parametrize(
    "points,message",
    [
        ([{"step": 100, "alpha": 0.5}, {"step": 50, "alpha": 0.6}], "increasing step order"),
        ([{"step": 100, "alpha": 0.5}, {"step": 100, "alpha": 0.6}], "same step"),
    ],
)
def test_curriculum_out_of_order_or_repeated_is_refused(points, message):
    doc = _run()
    doc["spec"]["mixing"]["curriculum"] = points
    assert message in _errors(doc)["spec.mixing.curriculum"]


def test_eval_interval_and_curriculum_beyond_the_run_warn(tmp_path):
    docs = minimal_docs()
    docs["CPTRun"]["spec"]["evaluation"] = {"interval": 5_000_000}
    docs["CPTRun"]["spec"]["mixing"]["curriculum"] = [{"step": 0, "alpha": 1.0}, {"step": 9_000_000, "alpha": 1.0}]
    path = tmp_path / "warn.yaml"
    path.write_text(dump(docs))
    result = cpt_plan(path)
    assert result.returncode == 0, result.stderr
    assert "warning" in result.stderr and "spec.evaluation.interval 5000000 is longer than the run" in result.stderr
    assert "spec.mixing.curriculum" in result.stderr and "9000000" in result.stderr
    assert "Traceback" not in result.stderr
    plans = json.loads(cpt_plan(path, "--output", "json").stdout)
    assert any("evaluation.interval" in w for w in plans[0]["warnings"])


def test_valid_examples_still_plan_without_warnings():
    for folder in ("legal-cpt", "minimal"):
        result = cpt_plan(REPO / "examples" / folder)
        assert result.returncode == 0, result.stderr
        assert "warning" not in result.stderr
    assert load_manifests([REPO / "examples" / "legal-cpt"])


def test_crd_rules_carry_the_new_checks():
    crds = {}
    for path in CRD_DIR.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = json.dumps(crd)
    assert "[.][a-z0-9]([a-z0-9-]*[a-z0-9])?" in crds["CheckpointPolicy"]  # bucket labels
    assert "curriculum must not list the same step twice" in crds["CPTRun"]
    assert '"pattern": "\\\\S"' in crds["CPTRun"]  # blank extension tokens

