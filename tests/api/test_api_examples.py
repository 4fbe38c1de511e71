"""Every shipped example validates against its CRD (structure and CEL, by cel-python)."""

from __future__ import annotations

import pytest

from api_helpers import example_docs
from cpt_operator.api.resources import SPEC_MODELS, load_manifests, parse_resource
from cpt_operator.api.validation import crd_schema, validate_object

DOCS = example_docs()


def test_examples_exist():
    kinds = {doc["kind"] for _, doc in DOCS}
    assert kinds == {"Corpus", "CheckpointPolicy", "CPTRun"}
    assert any("legal-cpt" in path for path, _ in DOCS) and any("minimal" in path for path, _ in DOCS)


@pytest.mark.parametrize("path,doc", DOCS, ids=[f"{p}:{d['metadata']['name']}" for p, d in DOCS])
def test_example_validates_against_committed_crd(crds, path, doc):
    defaulted, errors = validate_object(doc, crd_schema(crds[doc["kind"]], "v1alpha1"))
    assert errors == []
    # The typed model accepts what the schema accepted: models and CRD agree.
    SPEC_MODELS[doc["kind"]].model_validate(defaulted["spec"])


def test_defaults_are_applied_from_the_schema(legal):
    run = parse_resource(legal["CPTRun"])
    assert run.body["spec"]["suspend"] is False
    assert run.body["spec"]["trainer"]["metricsPort"] == 9400
    assert run.spec.training.schedule == "cosine"
    assert run.spec.evaluation.action == "Halt"


def test_complete_example_is_two_nodes_of_eight_gpus_with_an_s3_secret_policy():
    resources = {r.name: r for r in load_manifests(["examples/legal-cpt"])}
    run = resources["llama3-8b-legal"].spec
    assert (run.resources.nodes, run.resources.gpus_per_node) == (2, 8)
    assert {c.role for c in run.corpora} == {"domain", "replay"}
    policy = resources[run.checkpoint_policy_ref.name].spec
    assert policy.storage.s3 is not None and policy.storage.s3.credentials_secret.name == "legal-team-s3"
