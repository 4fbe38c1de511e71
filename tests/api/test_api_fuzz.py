"""Property-based fuzzing of `cpt plan` (hypothesis): every valid example under examples/,
mutated (type swaps, deletions, duplicated keys, huge and non-finite numbers, deep nesting,
aliases, unicode, non-UTF-8 bytes), through the validator/plan path in-process for most cases
and through the real CLI (`.venv/bin/cpt plan`, in a subprocess under a 4 GiB address-space
limit and a generous 60 s timeout) for a smaller sample. For every input: exit code 0, 1 or 2,
no traceback, one line per problem on stderr naming the file (or the resource), sane length."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import resource
import subprocess
import tempfile
from pathlib import Path

import yaml
from api_helpers import CPT, EXAMPLES, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpt_operator.cli import main

IN_PROCESS_EXAMPLES = 300
CLI_EXAMPLES = 25
COUNTS = {"in_process": 0, "cli": 0}


def _example_sets() -> list[tuple[str, list[dict]]]:
    sets = []
    for folder in sorted({p.parent for p in EXAMPLES.rglob("*.yaml")}):
        docs = [d for p in sorted(folder.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
        docs = [d for d in docs if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("cpt.dev/")]
        if docs:
            sets.append((str(folder.relative_to(REPO)), docs))
    return sets


EXAMPLE_SETS = _example_sets()

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from([10**30, -(10**30), 1e308, float("inf"), float("-inf"), float("nan"), 2**63, "", "\u202e\u0000x", "é\U0001f600"]),
)  # fmt: skip
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=6)


def _paths(node, prefix=()):
    """Every path to a value in the document."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _set(doc, path, value):
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def _get(doc, path):
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def mutated(draw) -> tuple[str, bytes]:
    name, docs = draw(st.sampled_from(EXAMPLE_SETS))
    docs = copy.deepcopy(docs)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(docs) - 1))
        paths = list(_paths(docs[i]))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["swap", "delete", "huge", "nest", "unicode", "value"]))
        old = _get(docs[i], path)
        if op == "swap":
            swaps = [None, True, 0, -1, 1.5, "x", [], {}, [old], {"k": old}, str(old)]
            docs[i] = _set(docs[i], path, draw(st.sampled_from(swaps)))
        elif op == "delete" and path:
            parent = _get(docs[i], path[:-1])
            del parent[path[-1]]
        elif op == "huge":
            docs[i] = _set(docs[i], path, draw(st.sampled_from([10**30, 1e308, float("inf"), float("nan"), -(2**70)])))
        elif op == "nest":
            deep = old
            for _ in range(draw(st.integers(1, 120))):
                deep = [deep] if draw(st.booleans()) else {"a": deep}
            docs[i] = _set(docs[i], path, deep)
        elif op == "unicode":
            docs[i] = _set(docs[i], path, draw(st.text(min_size=0, max_size=30)))
        else:
            docs[i] = _set(docs[i], path, draw(VALUES))
    text = yaml.safe_dump_all([d for d in docs], sort_keys=False, allow_unicode=draw(st.booleans()))
    lines = text.splitlines(keepends=True)
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(["duplicate", "alias", "bytes", "nonfinite", "latin1", "tab"]))
        at = draw(st.integers(0, max(0, len(lines) - 1)))
        if op == "duplicate" and lines:  # a duplicated key (or list item)
            lines.insert(at, lines[at])
        elif op == "alias":
            lines.insert(0, "x-a: &anchor [1, 2, 3]\n") if draw(st.booleans()) else None
            if lines and ": " in lines[at]:
                key = lines[at].split(": ", 1)[0]
                lines[at] = f"{key}: {draw(st.sampled_from(['*anchor', '&b [*b]', '*nowhere', '&c x']))}\n"
        elif op == "nonfinite" and lines and ": " in lines[at]:
            key = lines[at].split(": ", 1)[0]
            lines[at] = f"{key}: {draw(st.sampled_from(['.inf', '-.inf', '.nan', '1.0e+400', '0x7fffffffffffffffff', '1_000_000_000_000_000_000_000']))}\n"
        elif op == "tab" and lines:
            lines[at] = "\t" + lines[at]
    data = "".join(lines).encode("utf-8")
    if draw(st.booleans()) and draw(st.booleans()):
        cut = draw(st.integers(0, len(data)))
        junk = draw(st.sampled_from([b"\xff\xfe", b"\xc3", b"\x80\x80", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf"]))
        data = data[:cut] + junk + data[cut:]
    return name, data


def _check(rc: int, err: str, path: Path) -> None:
    assert rc in (0, 1, 2), (rc, err[:2000])
    assert "Traceback" not in err, err[:2000]
    lines = err.strip().splitlines()
    for line in lines:
        assert line.startswith("cpt plan: "), line[:500]
        assert len(line) <= 2100, line[:500]
    if rc == 2:
        assert lines, "exit 2 without a reason"
        for line in lines:
            if "warning:" in line:
                continue
            # one line per problem, naming the file, or (cross-resource problems) the resource
            names_resource = any(f"{kind} " in line for kind in ("CPTRun", "Corpus", "CheckpointPolicy"))
            assert path.name in line or names_resource, line[:500]
    if rc == 1:
        assert any("does not fit" in line for line in lines), err[:2000]


def _in_process(path: Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["plan", str(path), "--no-objects"])
    return rc, err.getvalue()


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


def test_every_example_set_is_valid_before_mutation():
    assert len(EXAMPLE_SETS) >= 4
    with tempfile.TemporaryDirectory() as tmp:
        for name, docs in EXAMPLE_SETS:
            path = Path(tmp) / "run.yaml"
            path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
            rc, err = _in_process(path)
            # the local examples name the run-local pool 'local', which an installation does not have
            assert rc in (0, 1) or (name.startswith("examples/local") and "'local' is not a node pool" in err), (name, err)


@settings(max_examples=IN_PROCESS_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(case=mutated())
def test_mutated_examples_in_process(case):
    _name, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.yaml"
        path.write_bytes(data)
        rc, err = _in_process(path)
        _check(rc, err, path)
    COUNTS["in_process"] += 1


@settings(max_examples=CLI_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(case=mutated())
def test_mutated_examples_through_the_real_cli(case):
    _name, data = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzzed.yaml"
        path.write_bytes(data)
        result = subprocess.run(
            [str(CPT), "plan", str(path), "--no-objects"], capture_output=True, timeout=60, cwd=REPO, preexec_fn=_limit_memory
        )
        err = result.stderr.decode("utf-8", "replace")
        _check(result.returncode, err, path)
    COUNTS["cli"] += 1


def test_report_case_count(capsys):
    with capsys.disabled():
        print(f"\nfuzz cases: {COUNTS['in_process']} in-process, {COUNTS['cli']} through the CLI")
    assert math.isfinite(1.0)
