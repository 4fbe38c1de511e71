"""Invalid manifests are rejected with a message naming the field, by the CRD schema and its
CEL rules (cel-python) exactly as the API server would, and by the typed parser."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from cpt_operator.api.resources import InvalidResource, parse_resource


def _set(path: str, value) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        node = doc
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[parts[-1]] = value

    return mutate


def _delete(path: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        node = doc
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        del node[int(last) if last.isdigit() else last]

    return mutate


def _both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        for m in mutations:
            m(doc)

    return mutate


S3 = {"uri": "s3://bucket/x"}
PVC = {"claimName": "vol", "path": "x"}

# (id, kind, mutation, field named in the error)
CASES = [
    ("alpha-above-one", "CPTRun", _set("spec.mixing.alpha", 1.5), "spec.mixing.alpha"),
    ("alpha-negative", "CPTRun", _set("spec.mixing.alpha", -0.1), "spec.mixing.alpha"),
    ("negative-learning-rate", "CPTRun", _set("spec.training.learningRate", -3e-5), "spec.training.learningRate"),
    ("zero-learning-rate", "CPTRun", _set("spec.training.learningRate", 0), "spec.training.learningRate"),
    ("min-lr-above-peak", "CPTRun", _set("spec.training.minLearningRate", 1e-3), "spec.training.minLearningRate"),
    ("warmup-fraction-one", "CPTRun", _set("spec.training.warmupFraction", 1.0), "spec.training.warmupFraction"),
    ("zero-gpus", "CPTRun", _set("spec.resources.gpusPerNode", 0), "spec.resources.gpusPerNode"),
    ("zero-nodes", "CPTRun", _set("spec.resources.nodes", 0), "spec.resources.nodes"),
    ("zero-weight", "CPTRun", _set("spec.corpora.0.weight", 0), "spec.corpora[0].weight"),
    ("unknown-role", "CPTRun", _set("spec.corpora.0.role", "general"), "spec.corpora[0].role"),
    ("no-domain-corpus", "CPTRun", _set("spec.corpora.0.role", "replay"), "spec.corpora"),
    ("same-corpus-twice", "CPTRun", _set("spec.corpora.1.name", "legal-contracts"), "spec.corpora"),
    ("alpha-below-one-without-replay", "CPTRun", _delete("spec.corpora.1"), "spec.mixing.alpha"),
    ("no-corpora", "CPTRun", _set("spec.corpora", []), "spec.corpora"),
    ("threshold-zero", "CPTRun", _set("spec.evaluation.forgettingThreshold", 0), "spec.evaluation.forgettingThreshold"),
    ("threshold-one", "CPTRun", _set("spec.evaluation.forgettingThreshold", 1.0), "spec.evaluation.forgettingThreshold"),
    ("unknown-action", "CPTRun", _set("spec.evaluation.action", "Panic"), "spec.evaluation.action"),
    ("zero-patience", "CPTRun", _set("spec.evaluation.patience", 0), "spec.evaluation.patience"),
    ("unknown-field", "CPTRun", _set("spec.training.learningRateX", 1e-4), "spec.training.learningRateX"),
    ("missing-policy-ref", "CPTRun", _delete("spec.checkpointPolicyRef"), "spec.checkpointPolicyRef"),
    ("cross-namespace-policy-ref", "CPTRun", _set("spec.checkpointPolicyRef.namespace", "other"), "spec.checkpointPolicyRef.namespace"),
    ("cross-namespace-corpus-ref", "CPTRun", _set("spec.corpora.0.namespace", "other"), "spec.corpora[0].namespace"),
    ("bad-memory-quantity", "CPTRun", _set("spec.resources.memory", "64 gigs"), "spec.resources.memory"),
    ("zero-stage-four", "CPTRun", _set("spec.deepspeed.zeroStage", 4), "spec.deepspeed.zeroStage"),
    ("param-offload-without-zero3", "CPTRun", _both(_set("spec.deepspeed.zeroStage", 2), _set("spec.deepspeed.offloadParameters", True)), "spec.deepspeed.offloadParameters"),  # noqa: E501
    ("batch-not-divisible", "CPTRun", _set("spec.training.globalBatchSize", 100), "spec.training.globalBatchSize"),
    ("uppercase-pool-name", "CPTRun", _set("spec.resources.nodePool", "H100"), "spec.resources.nodePool"),
    ("learning-rate-string", "CPTRun", _set("spec.training.learningRate", "fast"), "spec.training.learningRate"),
    ("bad-run-name", "CPTRun", _set("metadata.name", "Llama_Run"), "metadata.name"),
    ("missing-total-tokens", "CPTRun", _delete("spec.training.totalTokens"), "spec.training.totalTokens"),
    ("perplexity-eval-without-corpus", "CPTRun", _delete("spec.evaluation.generalEvals.0.corpus"), "spec.evaluation.generalEvals[0].corpus"),
    ("benchmark-without-task-file", "CPTRun", _both(_set("spec.evaluation.generalEvals.0.kind", "lmEvalHarness"), _delete("spec.evaluation.generalEvals.0.corpus")), "spec.evaluation.generalEvals[0].taskFile"),  # noqa: E501
    ("benchmark-with-a-corpus", "CPTRun", _both(_set("spec.evaluation.generalEvals.0.kind", "lmEvalHarness"), _set("spec.evaluation.generalEvals.0.taskFile", {"local": {"path": "/data/task.jsonl"}})), "spec.evaluation.generalEvals[0].corpus"),  # noqa: E501
    ("benchmark-limit-below-ten", "CPTRun", _set("spec.evaluation.generalEvals.0.limit", 5), "spec.evaluation.generalEvals[0].limit"),
    ("negative-standard-errors", "CPTRun", _set("spec.evaluation.minStandardErrors", -1), "spec.evaluation.minStandardErrors"),
    ("two-storage-backends", "CheckpointPolicy", _set("spec.storage.pvc", PVC), "spec.storage"),
    ("no-storage-backend", "CheckpointPolicy", _set("spec.storage", {}), "spec.storage"),
    ("keep-last-zero", "CheckpointPolicy", _set("spec.keepLastN", 0), "spec.keepLastN"),
    ("unknown-best-metric", "CheckpointPolicy", _set("spec.bestMetric", "loss"), "spec.bestMetric"),
    ("milestone-not-multiple", "CheckpointPolicy", _set("spec.milestoneInterval", 750), "spec.milestoneInterval"),
    ("zero-composite-weights", "CheckpointPolicy", _set("spec.compositeWeights", {"domain": 0, "general": 0}), "spec.compositeWeights.domain"),
    ("s3-uri-not-s3", "CheckpointPolicy", _set("spec.storage.s3.uri", "http://bucket/x"), "spec.storage.s3.uri"),
    ("pvc-path-escapes", "CheckpointPolicy", _both(_delete("spec.storage.s3"), _set("spec.storage.pvc", {"claimName": "vol", "path": "../other-team"})), "spec.storage.pvc.path"),  # noqa: E501
    ("cross-namespace-secret", "CheckpointPolicy", _set("spec.storage.s3.credentialsSecret.namespace", "kube-system"), "spec.storage.s3.credentialsSecret.namespace"),  # noqa: E501
    ("threshold-out-of-range", "Corpus", _set("spec.curation.nearDedup.threshold", 1.2), "spec.curation.nearDedup.threshold"),
    ("min-above-max-tokens", "Corpus", _set("spec.curation.lengthFilter.minTokens", 300000), "spec.curation.lengthFilter.minTokens"),
    ("quality-filter-without-model", "Corpus", _delete("spec.curation.qualityFilter.referenceModel"), "spec.curation.qualityFilter.referenceModel"),  # noqa: E501
    ("unknown-format", "Corpus", _set("spec.format", "csv"), "spec.format"),
    ("no-sources", "Corpus", _set("spec.sources", []), "spec.sources"),
    ("source-two-backends", "Corpus", _set("spec.sources.0.location.pvc", PVC), "spec.sources[0].location"),
    ("bad-cpu-quantity", "Corpus", _set("spec.resources.cpu", "two"), "spec.resources.cpu"),
    ("eval-fraction-too-big", "Corpus", _set("spec.evalFraction", 0.6), "spec.evalFraction"),
    ("zero-parallelism", "Corpus", _set("spec.parallelism", 0), "spec.parallelism"),
]


@pytest.mark.parametrize("case_id,kind,mutate,field", CASES, ids=[c[0] for c in CASES])
def test_invalid_manifest_is_rejected_naming_the_field(legal, case_id, kind, mutate, field):
    doc = copy.deepcopy(legal[kind])
    parse_resource(doc)  # the unmutated example is valid
    mutate(doc)
    with pytest.raises(InvalidResource) as info:
        parse_resource(doc)
    paths = [e.path for e in info.value.errors]
    assert field in paths, f"{case_id}: errors name {paths}, not {field}"
    assert field in str(info.value)


def test_there_are_at_least_25_cases():
    assert len(CASES) >= 25


def _started(doc: dict) -> dict:
    old = copy.deepcopy(doc)
    old["status"] = {"phase": "Running", "startedAt": "2026-12-01T10:00:00Z"}
    return old


@pytest.mark.parametrize(
    "field,mutate",
    [
        ("spec.baseModel", _set("spec.baseModel.location.s3.uri", "s3://legal-team-models/other")),
        ("spec.corpora", _set("spec.corpora.0.weight", 2.0)),
        ("spec.tokenizerExtension", _set("spec.tokenizerExtension", {"enabled": True, "tokens": ["indemnify"]})),
    ],
)
def test_immutable_field_mutated_after_start_is_rejected(legal, field, mutate):
    old = _started(legal["CPTRun"])
    new = copy.deepcopy(legal["CPTRun"])
    mutate(new)
    with pytest.raises(InvalidResource) as info:
        parse_resource(new, old=old)
    assert field in [e.path for e in info.value.errors]
    assert "immutable" in str(info.value)


def test_mutable_fields_and_unstarted_runs_may_change(legal):
    new = copy.deepcopy(legal["CPTRun"])
    new["spec"]["suspend"] = True
    parse_resource(new, old=_started(legal["CPTRun"]))
    new["spec"]["baseModel"]["location"]["s3"]["uri"] = "s3://legal-team-models/other"
    parse_resource(new, old=copy.deepcopy(legal["CPTRun"]))  # not started yet: allowed


def test_wrong_api_version_and_unknown_kind(legal):
    doc = copy.deepcopy(legal["CPTRun"])
    doc["apiVersion"] = "cpt.dev/v1"
    with pytest.raises(InvalidResource, match="apiVersion.*only v1alpha1"):
        parse_resource(doc)
    doc["apiVersion"], doc["kind"] = "cpt.dev/v1alpha1", "CPTJob"
    with pytest.raises(InvalidResource, match="unknown kind 'CPTJob'"):
        parse_resource(doc)


def test_every_error_is_reported_not_just_the_first(legal):
    doc = copy.deepcopy(legal["CPTRun"])
    doc["spec"]["mixing"]["alpha"] = 2
    doc["spec"]["resources"]["gpusPerNode"] = 0
    with pytest.raises(InvalidResource) as info:
        parse_resource(doc)
    assert {"spec.mixing.alpha", "spec.resources.gpusPerNode"} <= {e.path for e in info.value.errors}
