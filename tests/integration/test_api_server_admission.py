"""The API server itself, with our CRDs, admits what our validator admits and refuses what it
refuses, naming the same field; and it defaults exactly as our models do.

Everything goes in as tenant-a (the `edit` role the chart's tenant roles aggregate into),
server-side applied with strict field validation, as `kubectl apply --server-side` does.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml
from integration_setup import Identity

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))
from test_api_invalid import CASES  # noqa: E402  (our validator's cases: each also asserts ours refuses)

from cpt_operator.api.resources import InvalidResource, parse_resource  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"Corpus": "cpt_operator.api.corpus.CorpusSpec", "CheckpointPolicy": "cpt_operator.api.checkpoint_policy.CheckpointPolicySpec",
          "CPTRun": "cpt_operator.api.cptrun.CPTRunSpec"}  # fmt: skip


def example_docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and str(doc.get("apiVersion", "")).startswith("cpt.dev/"):
                out.append((f"{path.relative_to(ROOT)}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def legal() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for where, doc in example_docs():
        if "legal-cpt" in where:
            out.setdefault(doc["kind"], copy.deepcopy(doc))
    return out


def server_create(who: Identity, doc: dict, namespace: str):
    """A dry-run create with strict field validation (what `kubectl create`/`apply` send)."""
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = namespace
    return who.request("POST", who.path_of(doc, namespace, with_name=False), doc,
                       params={"fieldValidation": "Strict", "dryRun": "All"})  # fmt: skip


def diff(a, b, path=""):
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in diff(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: server {a!r}, models {b!r}"]


def without_empty(value):
    """An empty list in a model's dump is an absent field on the server (no default is declared
    for empty lists): the same object."""
    if isinstance(value, dict):
        return {k: without_empty(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [without_empty(v) for v in value]
    return value


def server_apply(who: Identity, doc: dict, namespace: str, dry_run: bool):
    doc = copy.deepcopy(doc)
    doc["metadata"]["namespace"] = namespace
    params = {"fieldManager": "tenant", "force": "true", "fieldValidation": "Strict", **({"dryRun": "All"} if dry_run else {})}
    return who.request("PATCH", who.path_of(doc, namespace), doc, "application/apply-patch+yaml", params=params)


def model_of(kind: str):
    module, name = MODELS[kind].rsplit(".", 1)
    return getattr(__import__(module, fromlist=[name]), name)


def test_every_example_is_admitted_and_defaulted_as_our_models_default(identities: dict[str, Identity], namespace: str) -> None:
    tenant = identities["tenant-a"]
    docs = example_docs()
    assert len(docs) >= 9
    seen: set[tuple[str, str]] = set()
    for where, doc in docs:
        key = (doc["kind"], doc["metadata"]["name"])
        ns = f"{namespace[:50]}-{len(seen)}" if key in seen else namespace  # same names in several examples
        if ns != namespace:
            identities["admin"].apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            identities["admin"].apply({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "tenant-a-edit", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "tenant-a"}],
            })  # fmt: skip
        seen.add(key)
        resp = server_apply(tenant, doc, ns, dry_run=False)
        assert resp.status_code in (200, 201), f"{where}: the API server refused it: {resp.text[:1500]}"
        stored = without_empty(resp.json()["spec"])
        ours = without_empty(model_of(doc["kind"]).model_validate(doc["spec"]).to_wire())
        assert stored == ours, f"{where}: server defaults differ from the models': {diff(stored, ours)}"


@pytest.mark.parametrize("case_id,kind,mutate,field", CASES, ids=[c[0] for c in CASES])
def test_the_api_server_refuses_what_our_validator_refuses(identities: dict[str, Identity], namespace: str,
                                                            case_id: str, kind: str, mutate, field: str) -> None:  # fmt: skip
    doc = copy.deepcopy(legal()[kind])
    mutate(doc)
    with pytest.raises(InvalidResource):
        parse_resource(doc)  # ours refuses (test_api_invalid asserts the field)
    if case_id == "bad-run-name":  # the name is part of the URL: a 422 from the server for the path
        doc["metadata"]["name"] = "llama-run-bad-name-Upper"
    resp = server_create(identities["tenant-a"], doc, namespace)
    assert resp.status_code in (400, 422), f"{case_id}: the API server admitted what we refuse ({resp.status_code}): {resp.text[:600]}"
    message = resp.json().get("message", "")
    wanted = "metadata.name" if case_id == "bad-run-name" else field
    assert wanted in message, f"{case_id}: the server's message does not name {wanted}: {message[:600]}"


NUMBERS = """apiVersion: cpt.dev/v1alpha1
kind: CPTRun
metadata:
  name: yaml-numbers
spec:
  baseModel:
    location: {pvc: {claimName: team-data, path: models/base}}
    parameters: 1_100_000_000
  corpora:
    - {name: docs, role: domain}
  mixing: {alpha: 1.0}
  training:
    totalTokens: 5e10
    learningRate: 3e-5
    minLearningRate: 3.0E-6
  resources: {nodePool: h100-80gb, nodes: 1, gpusPerNode: 8}
  checkpointPolicyRef: {name: default}
"""


def test_yaml_numbers_are_read_as_the_api_server_reads_them(identities: dict[str, Identity], namespace: str) -> None:
    """The same YAML text, sent as YAML to the API server (which parses it as kubectl does) and
    read by our reader: the stored numbers equal ours."""
    from cpt_operator.api.reading import read_text

    (doc,) = read_text(NUMBERS)
    ours = doc.body["spec"]
    tenant = identities["tenant-a"]
    path = tenant.path_of({"apiVersion": "cpt.dev/v1alpha1", "kind": "CPTRun", "metadata": {"name": "x"}}, namespace, with_name=False)
    resp = tenant.request("POST", path, NUMBERS, "application/yaml", params={"dryRun": "All", "fieldValidation": "Strict"})
    assert resp.status_code == 201, resp.text[:1000]
    stored = resp.json()["spec"]
    for section, field in (("training", "totalTokens"), ("training", "learningRate"), ("training", "minLearningRate"),
                           ("baseModel", "parameters")):  # fmt: skip
        assert stored[section][field] == ours[section][field], (section, field, stored[section][field], ours[section][field])
    assert ours["training"]["totalTokens"] == 50_000_000_000 and ours["baseModel"]["parameters"] == 1_100_000_000
