"""One source for the CRDs: the chart's copies are the top-level crds/ byte for byte."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import yaml

from chart_support import CHART_DIR, REPO, load_sync_module


def test_chart_crds_equal_top_level_crds() -> None:
    source = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    assert source, "top-level crds/ is empty"
    chart = {p.name: p.read_bytes() for p in (CHART_DIR / "crds").glob("*.yaml")}
    assert set(chart) == set(source) | {"kopf.dev_peerings.yaml"}
    for name, content in source.items():
        assert chart[name] == content, f"charts/cpt-operator/crds/{name} differs: run python charts/sync.py"


def test_sync_check_passes_and_detects_drift(tmp_path: Any, monkeypatch: Any) -> None:
    result = subprocess.run([sys.executable, str(REPO / "charts" / "sync.py"), "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    sync = load_sync_module()
    # The same check against a drifted copy of the chart's crds/.
    drifted = tmp_path / "crds"
    drifted.mkdir()
    for p in (CHART_DIR / "crds").glob("*.yaml"):
        (drifted / p.name).write_bytes(p.read_bytes())
    (drifted / "cpt.dev_cptruns.yaml").write_text("# edited by hand\n", encoding="utf-8")
    (drifted / "cpt.dev_stale.yaml").write_text("", encoding="utf-8")
    monkeypatch.setattr(sync, "CHART_CRDS", drifted)
    problems = sync.crd_differences()
    assert any("cpt.dev_cptruns.yaml differs" in p for p in problems)
    assert any("cpt.dev_stale.yaml has no source" in p for p in problems)
    sync.write_crds()
    assert sync.crd_differences() == []
    assert not (drifted / "cpt.dev_stale.yaml").exists() and (drifted / "kopf.dev_peerings.yaml").exists()


def test_helm_loads_every_crd_from_the_chart(chart: Any) -> None:
    names = set()
    for crd_file in chart.crds:
        for crd in yaml.safe_load_all(crd_file["data"]):
            names.add(crd["metadata"]["name"])
    assert names == {"corpora.cpt.dev", "checkpointpolicies.cpt.dev", "cptruns.cpt.dev", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
