"""Helpers for the API tier: the committed CRDs (failing loudly if missing) and the examples."""

from __future__ import annotations

import copy
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
