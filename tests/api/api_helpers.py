"""Helpers for the API tier: the committed CRDs (failing loudly if missing) and the examples."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
EXAMPLES = REPO / "examples"


def load_crds() -> dict[str, dict]:
    files = sorted(CRD_DIR.glob("*.yaml"))
    if len(files) != 3:
        raise RuntimeError(f"expected 3 CRDs under {CRD_DIR}, found {len(files)}: run python -m cpt_operator.api.crdgen")
    crds = {}
    for path in files:
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


@pytest.fixture(scope="session")
def crds() -> dict[str, dict]:
    return load_crds()


def example_docs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("cpt.dev/"):
                docs.append((str(path.relative_to(REPO)), doc))
    return docs


@pytest.fixture
def legal() -> dict[str, dict]:
    """Fresh copies of the complete legal example, by kind (first Corpus is the domain one)."""
    out: dict[str, dict] = {}
    for path, doc in example_docs():
        if "legal-cpt" in path:
            out.setdefault(doc["kind"], copy.deepcopy(doc))
    return out


# --------------------------------------------------------------------------- `cpt plan` on hostile input

CPT = REPO / ".venv" / "bin" / "cpt"
MINIMAL = EXAMPLES / "minimal" / "cpt-minimal.yaml"


def minimal_docs() -> dict[str, dict]:
    """Fresh copies of the minimal example's three resources, by kind."""
    return {d["kind"]: d for d in yaml.safe_load_all(MINIMAL.read_text())}


def dump(docs: dict[str, dict] | list[dict]) -> str:
    items = list(docs.values()) if isinstance(docs, dict) else docs
    return yaml.safe_dump_all(items, sort_keys=False)


def cpt_plan(path: Path, *args: str, timeout: float = 60):
    """The real CLI entry point (`.venv/bin/cpt plan`) in a subprocess with a generous deadline:
    a hang fails the test as a TimeoutExpired instead of hanging the suite."""
    import subprocess
    import sys

    command = [str(CPT)] if CPT.exists() else [sys.executable, "-m", "cpt_operator.cli"]
    return subprocess.run([*command, "plan", str(path), "--no-objects", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_one_clear_line(result, *expected: str, limit: int = 400) -> str:
    """Exit 2, exactly one line on stderr, no traceback, each `expected` in it, a sane length."""
    err = result.stderr.strip()
    assert result.returncode == 2, (result.returncode, err[:2000])
    assert "Traceback" not in err, err[:2000]
    assert len(err.splitlines()) == 1, err[:2000]
    assert len(err) <= limit, f"{len(err)} characters: {err[:500]}"
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    return err


def cpt(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The real `cpt` CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "cpt_operator.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def write_legal(tmp_path: Path, run_overrides: dict, name: str = "legal") -> Path:
    """The legal example with the CPTRun's spec deep-merged with `run_overrides`."""
    out = tmp_path / name
    out.mkdir()
    for path in (EXAMPLES / "legal-cpt").glob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            if doc["kind"] == "CPTRun":
                _merge(doc["spec"], copy.deepcopy(run_overrides))
        (out / path.name).write_text(yaml.safe_dump_all(docs))
    return out


def _merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
