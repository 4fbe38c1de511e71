"""Reading manifests is bounded (aliases, depth, size, time) and reads YAML as kubectl does
(sigs.k8s.io/yaml): every hostile input is built here and refused by the real `cpt plan`
in one clear line, well within a generous deadline, with no traceback."""

from __future__ import annotations

import math

import pytest
import yaml
from api_helpers import MINIMAL, assert_one_clear_line, cpt_plan, dump, minimal_docs

from cpt_operator.api.reading import MAX_DEPTH, ReadError, read_text
from cpt_operator.api.resources import ManifestError, load_manifests


def _alias_bomb(indent: str, levels: int = 9) -> str:
    """The classic "billion laughs": 9 levels of 9 aliases each, about a kilobyte of YAML
    expanding to 9**9 (387 million) strings."""
    lines = [f'{indent}a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"{indent}a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _minimal_text() -> str:
    return MINIMAL.read_text()


@pytest.mark.parametrize("where", ["annotations", "status"])
def test_alias_bomb_is_refused_quickly(tmp_path, where):
    text = _minimal_text()
    if where == "annotations":
        bomb = "  annotations:\n" + _alias_bomb("    ")
        text = text.replace("metadata:\n  name: docs-cpt\n", "metadata:\n  name: docs-cpt\n" + bomb, 1)
    else:
        text = text.replace("metadata:\n  name: docs\n", "metadata:\n  name: docs\nstatus:\n  x:\n" + _alias_bomb("    "), 1)
    assert len(text.encode()) < 3000
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    err = assert_one_clear_line(cpt_plan(path), "bomb.yaml", "aliases are expanded")
    assert "document" in err


def test_alias_cycle_is_refused(tmp_path):
    path = tmp_path / "cycle.yaml"
    path.write_text("apiVersion: cpt.dev/v1alpha1\nkind: Corpus\nmetadata: {name: x}\nspec: &s {sources: [*s]}\n")
    assert_one_clear_line(cpt_plan(path), "cycle")


@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a: ", "}")])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path, opener, closer):
    path = tmp_path / "deep.yaml"
    path.write_text("apiVersion: cpt.dev/v1alpha1\nkind: Corpus\nmetadata: {name: x}\nspec: {sources: " + opener * 3000 + closer * 3000 + "}\n")
    err = assert_one_clear_line(cpt_plan(path), f"nested more than {MAX_DEPTH} levels deep")
    assert "RecursionError" not in err


def test_deep_nesting_through_aliases_is_refused():
    # an anchor nested 40 deep, aliased 40 deep: each part is shallow, together they are not
    deep = "a: &a " + "[" * 40 + "1" + "]" * 40 + "\nb: " + "[" * 40 + "*a" + "]" * 40 + "\n"
    with pytest.raises(ReadError, match="aliases are expanded"):
        read_text(deep)
    read_text("a: &a " + "[" * 20 + "1" + "]" * 20 + "\nb: " + "[" * 20 + "*a" + "]" * 20 + "\n")


def test_a_file_over_the_request_limit_is_refused_before_parsing(tmp_path):
    docs = minimal_docs()
    docs["CPTRun"]["metadata"]["annotations"] = {"note": "x" * (5 * 2**20)}
    path = tmp_path / "huge.yaml"
    path.write_text(dump(docs))
    assert_one_clear_line(cpt_plan(path), "huge.yaml", "3,145,728 bytes")


def test_an_object_over_the_object_limit_is_refused(tmp_path):
    docs = minimal_docs()
    docs["CPTRun"]["status"] = {"phase": "Pending", "junk": ["y" * 1000] * 1700}
    path = tmp_path / "big.yaml"
    path.write_text(dump(docs))
    assert_one_clear_line(cpt_plan(path), "1,572,864 bytes")


def test_a_five_megabyte_name_is_not_echoed(tmp_path):
    docs = minimal_docs()
    docs["CPTRun"]["metadata"]["name"] = "n" * 1_000_000
    path = tmp_path / "name.yaml"
    path.write_text(dump(docs))
    err = assert_one_clear_line(cpt_plan(path), "metadata.name", "at most 63")
    assert err.count("n") < 300


# --------------------------------------------------------------------------- YAML as kubectl reads it


def test_numbers_read_as_kubectl_reads_them(tmp_path):
    text = _minimal_text().replace("    totalTokens: 1000000000\n", "    totalTokens: 5e10\n    learningRate: 3e-5\n    minLearningRate: 3E-6\n")
    path = tmp_path / "sci.yaml"
    path.write_text(text)
    (run,) = [r for r in load_manifests([path]) if r.kind == "CPTRun"]
    assert run.spec.training.total_tokens == 50_000_000_000 and isinstance(run.body["spec"]["training"]["totalTokens"], int)
    assert run.spec.training.learning_rate == pytest.approx(3e-5)
    result = cpt_plan(path)
    assert result.returncode == 0, result.stderr
    assert "50,000,000,000 tokens" in result.stdout


def test_underscored_integers_and_plain_strings():
    (doc,) = (d.body for d in read_text("a: 50_000_000_000\nb: 2026-12-01T10:00:00Z\nc: 1:30\nd: 0x10\ne: .5\nf: 1.\ng: 7\n"))
    assert doc == {"a": 50_000_000_000, "b": "2026-12-01T10:00:00Z", "c": "1:30", "d": 16, "e": 0.5, "f": 1.0, "g": 7}
    assert isinstance(doc["g"], int)


def test_duplicate_keys_are_refused_naming_both_lines(tmp_path):
    text = _minimal_text().replace("  mixing:\n    alpha: 1.0\n", "  mixing:\n    alpha: 0.7\n    alpha: 1.0\n")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    lines = text.splitlines()
    first = lines.index("    alpha: 0.7") + 1
    assert_one_clear_line(cpt_plan(path), "duplicate key 'alpha'", f"line {first} and line {first + 1}")


@pytest.mark.parametrize("value", [".inf", "-.Inf", ".nan", "1.0e+400", "-1e999"])
def test_non_finite_numbers_are_refused_naming_the_field(tmp_path, value):
    text = _minimal_text().replace("    totalTokens: 1000000000\n", f"    totalTokens: 1000000000\n    weightDecay: {value}\n")
    path = tmp_path / "inf.yaml"
    path.write_text(text)
    assert_one_clear_line(cpt_plan(path), "spec.training.weightDecay", "finite")


def test_non_finite_numbers_are_refused_by_the_validator_too():
    from cpt_operator.api.resources import InvalidResource, parse_resource

    doc = minimal_docs()["CPTRun"]
    for bad in (math.inf, math.nan):
        doc["spec"]["training"]["weightDecay"] = bad
        with pytest.raises(InvalidResource, match="spec.training.weightDecay: must be a finite number"):
            parse_resource(doc)


@pytest.mark.parametrize(
    "content,expected",
    [
        ("a: !!binary aGVsbG8=\n", "not JSON"),
        ("? [a, b]\n: c\n", "malformed YAML"),
        ("1: a\n", "not a string"),
        ("a: !custom x\n", "malformed YAML"),
        ("a: [1, 2\n", "malformed YAML (line"),
    ],
)
def test_values_json_cannot_carry_are_one_line(tmp_path, content, expected):
    path = tmp_path / "odd.yaml"
    path.write_text(content)
    assert_one_clear_line(cpt_plan(path), expected)


def test_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: caf\xe9\n")
    assert_one_clear_line(cpt_plan(path), "not UTF-8")


def test_reader_errors_are_manifest_errors(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(ManifestError, match=r"dup.yaml: document 1 \(line 2\): duplicate key 'a' \(line 1 and line 2\)"):
        load_manifests([path])


def test_valid_examples_read_the_same_as_pyyaml():
    for path in sorted(MINIMAL.parent.parent.rglob("*.yaml")):
        ours = [d.body for d in read_text(path.read_text())]
        theirs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert ours == theirs, path
