"""The CRDs pass the API server's own CRD validation, CEL cost limits included.

kubernetes-validate and cel-python cannot see the cost limits: only the API server's
estimator does. `tests/api/crdcost` is a small Go program over apiextensions-apiserver
(the module the API server runs) that validates each CRD exactly as a create would and
reports every rule's estimated cost (worst-case cost of one evaluation times the
worst-case number of evaluations). The margins below keep every rule far from the
limits, so a change that lets a rule walk an unbounded string or list fails here, not in
a tenant's `helm install`.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

import gotools

ROOT = Path(__file__).resolve().parents[2]
CRD_FILES = sorted((ROOT / "crds").glob("*.yaml")) + sorted((ROOT / "charts/cpt-operator/crds").glob("*.yaml"))
# Shares of the server's limits any one rule, and any one CRD, may take.
RULE_SHARE = 0.10
CRD_SHARE = 0.10


@pytest.fixture(scope="module")
def crdcost() -> Path:
    return gotools.build("crdcost")


def run_crdcost(tool: Path, *files: Path) -> list[dict]:
    out = subprocess.run([str(tool), *map(str, files)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_every_crd_passes_the_api_servers_validation(crdcost):
    for report in run_crdcost(crdcost, *CRD_FILES):
        assert report["errors"] == [], f"{report['file']}: the API server refuses it: {report['errors']}"


def test_every_rule_stays_far_below_the_cost_limits(crdcost):
    reports = run_crdcost(crdcost, *(ROOT / "crds").glob("*.yaml"))
    assert {r["name"] for r in reports} == {"corpora.cpt.dev", "checkpointpolicies.cpt.dev", "cptruns.cpt.dev"}
    for report in reports:
        assert report["rules"], f"{report['name']}: no rule was costed"
        for rule in report["rules"]:
            assert not rule.get("error"), f"{report['name']} {rule['path']}: {rule['error']}"
            assert rule["cost"] <= RULE_SHARE * report["ruleCostLimit"], (
                f"{report['name']} {rule['path']}: rule {rule['rule']!r} costs {rule['cost']:,} "
                f"(limit {report['ruleCostLimit']:,}): bound the strings and lists it walks (maxLength, maxItems)"
            )
        assert report["totalCost"] <= CRD_SHARE * report["crdCostLimit"], f"{report['name']}: {report['totalCost']:,}"


def _unbounded_include(tmp_path: Path) -> Path:
    crd = yaml.safe_load((ROOT / "crds/cpt.dev_corpora.yaml").read_text())
    source = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["sources"]
    del source["items"]["properties"]["include"]["items"]["maxLength"]
    path = tmp_path / "corpora-unbounded.yaml"
    path.write_text(yaml.safe_dump(crd))
    return path


def test_an_unbounded_string_under_a_rule_is_refused_as_the_server_would(crdcost, tmp_path):
    """The defect a real server found: `include[]` without maxLength made the rule cost ~10M."""
    (report,) = run_crdcost(crdcost, _unbounded_include(tmp_path))
    per_rule = [e for e in report["errors"] if "sources].items.x-kubernetes-validations" in e and "estimated rule cost exceeds budget" in e]
    assert per_rule, report["errors"]
    assert any("estimated rule cost total for entire OpenAPIv3 schema exceeds budget" in e for e in report["errors"]), report["errors"]
    (worst,) = [r for r in report["rules"] if "include" in r["rule"]]
    assert worst["cost"] > report["ruleCostLimit"]


def test_an_empty_default_object_under_rules_is_refused_as_the_server_would(crdcost, tmp_path):
    """The server checks a default against the object's rules before nested defaults apply."""
    crd = yaml.safe_load((ROOT / "crds/cpt.dev_corpora.yaml").read_text())
    curation = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["curation"]
    curation["properties"]["lengthFilter"]["default"] = {}
    path = tmp_path / "corpora-empty-default.yaml"
    path.write_text(yaml.safe_dump(crd))
    (report,) = run_crdcost(crdcost, path)
    assert any("lengthFilter" in e and "no such key" in e for e in report["errors"]), report["errors"]
