"""Checkpoint rotation by policy: the kept set equals a simple reference implementation
(property-based), rotation against a real S3-compatible server on loopback never deletes the
newest or the best, and deletions stay inside the run's prefix."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpt_operator.control.storage import (
    DeletionRefused,
    LocalCheckpointStore,
    S3CheckpointStore,
    confined_step,
    step_dir_name,
)
from cpt_operator.decide.retention import EvaluatedCheckpoint, RetentionPolicy, select_checkpoints_to_keep
from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_METRICS_FILE

THRESHOLD = 0.03
BASE_PPL = 20.0


def reference_keep(ckpts, policy, threshold, base):
    """The policy as a person would state it, written as plainly as possible."""
    steps = sorted(c.step for c in ckpts)
    keep = set(steps[-policy.keep_last_n :]) | {steps[-1]}
    def value(c):
        if policy.best_metric == "composite":
            return policy.weight_domain * (base - c.domain_perplexity) / base - policy.weight_general * max(0.0, c.general_regression)
        return -(c.domain_perplexity if policy.best_metric == "domainPerplexity" else c.general_regression)
    eligible = [c for c in ckpts if c.general_regression <= threshold]
    ranked = sorted(eligible, key=lambda c: (-value(c), c.step))
    keep |= {c.step for c in ranked[: policy.keep_best_k]}
    if ranked:
        keep.add(ranked[0].step)
    if policy.milestone_interval:
        keep |= {s for s in steps if s % policy.milestone_interval == 0}
    return keep


checkpoint_lists = st.lists(
    st.tuples(st.floats(5.0, 40.0), st.floats(-0.05, 0.2), st.floats(5.0, 40.0)), min_size=1, max_size=40
)
policies = st.builds(
    RetentionPolicy,
    keep_last_n=st.integers(1, 5),
    keep_best_k=st.integers(0, 4),
    best_metric=st.sampled_from(["composite", "domainPerplexity", "generalScore"]),
    milestone_interval=st.sampled_from([0, 1000, 2000]),
    weight_domain=st.sampled_from([0.0, 1.0, 2.0]),
    weight_general=st.sampled_from([0.5, 1.0, 3.0]),
)


def make_ckpts(raw):
    return [
        EvaluatedCheckpoint(step=(i + 1) * 500, uri=f"s3://b/p/{step_dir_name((i + 1) * 500)}", domain_perplexity=d,
                            general_regression=r, general_score=g)  # fmt: skip
        for i, (d, r, g) in enumerate(raw)
    ]


@given(raw=checkpoint_lists, policy=policies)
@settings(max_examples=300, deadline=None)
def test_kept_set_equals_the_reference_implementation(raw, policy):
    ckpts = make_ckpts(raw)
    decision = select_checkpoints_to_keep(ckpts, policy, THRESHOLD, BASE_PPL)
    assert set(decision.keep) == reference_keep(ckpts, policy, THRESHOLD, BASE_PPL)
    assert set(decision.keep).isdisjoint(decision.delete)
    assert set(decision.keep) | set(decision.delete) == {c.step for c in ckpts}
    assert max(c.step for c in ckpts) in decision.keep
    if decision.best is not None:
        assert decision.best in decision.keep
        assert next(c for c in ckpts if c.step == decision.best).general_regression <= THRESHOLD


def test_only_checkpoints_within_the_threshold_are_eligible_as_best():
    ckpts = [
        EvaluatedCheckpoint(500, "u", domain_perplexity=10.0, general_regression=0.10),  # best domain, forgot
        EvaluatedCheckpoint(1000, "u", domain_perplexity=15.0, general_regression=0.01),
        EvaluatedCheckpoint(1500, "u", domain_perplexity=18.0, general_regression=0.02),
    ]
    policy = RetentionPolicy(keep_last_n=1, keep_best_k=1, best_metric="domainPerplexity")
    decision = select_checkpoints_to_keep(ckpts, policy, THRESHOLD, BASE_PPL)
    assert decision.best == 1000
    assert decision.keep == {1000: ["bestK", "best"], 1500: ["newest", "lastN"]}
    assert decision.delete == [500]


def put_checkpoint(s3, prefix_key: str, step: int, metrics: dict, complete: bool = True) -> None:
    folder = f"{prefix_key}/{step_dir_name(step)}"
    s3.put_object(Bucket=s3.bucket, Key=f"{folder}/model.safetensors", Body=b"weights")
    s3.put_object(Bucket=s3.bucket, Key=f"{folder}/{CHECKPOINT_METRICS_FILE}", Body=json.dumps(metrics).encode())
    if complete:
        s3.put_object(Bucket=s3.bucket, Key=f"{folder}/{CHECKPOINT_COMPLETE_MARKER}", Body=b"")


@given(raw=st.lists(st.tuples(st.floats(5.0, 40.0), st.floats(-0.05, 0.2), st.floats(5.0, 40.0)), min_size=30, max_size=34),
       policy=policies)  # fmt: skip
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_rotation_on_s3_keeps_exactly_the_policy_set(s3, raw, policy):
    prefix_key = f"cpt/tenant-a/run-{abs(hash((tuple(raw), policy))) % 10**9}"
    store = S3CheckpointStore(f"s3://{s3.bucket}/{prefix_key}", s3)
    for i, (d, r, g) in enumerate(raw):
        put_checkpoint(s3, prefix_key, (i + 1) * 500, {"domain_perplexity": d, "general_regression": r, "general_score": g})
    stored = store.list_complete()
    assert len(stored) == len(raw)
    ckpts = []
    for entry in stored:
        m = store.read_metrics(entry.step)
        ckpts.append(EvaluatedCheckpoint(entry.step, entry.uri, m["domain_perplexity"], m["general_score"], m["general_regression"]))
    decision = select_checkpoints_to_keep(ckpts, policy, THRESHOLD, BASE_PPL)
    for step in decision.delete:
        store.delete(next(c.uri for c in ckpts if c.step == step))
    left = {c.step for c in store.list_complete()}
    assert left == reference_keep(ckpts, policy, THRESHOLD, BASE_PPL)
    assert max(c.step for c in ckpts) in left
    if decision.best is not None:
        assert decision.best in left
    # deleted folders are gone entirely, not just their markers
    for step in decision.delete:
        assert s3.list_objects_v2(Bucket=s3.bucket, Prefix=f"{prefix_key}/{step_dir_name(step)}/").get("KeyCount", 0) == 0


def test_incomplete_checkpoints_are_not_listed(s3):
    store = S3CheckpointStore(f"s3://{s3.bucket}/cpt/ns/run", s3)
    put_checkpoint(s3, "cpt/ns/run", 500, {}, complete=True)
    put_checkpoint(s3, "cpt/ns/run", 1000, {}, complete=False)
    assert [c.step for c in store.list_complete()] == [500]


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/cpt/ns/other-run/step-00000500",  # another run
        "s3://bucket/cpt/ns/run-2/step-00000500",  # a run whose name extends ours
        "s3://bucket/cpt/ns/run/../other/step-00000500",  # traversal
        "s3://bucket/cpt/ns/run/step-00000500/../../x",
        "s3://bucket/cpt/ns/run",  # the prefix itself
        "s3://other-bucket/cpt/ns/run/step-00000500",
        "s3://bucket/cpt/ns/run/notes",
    ],
)
def test_deletion_outside_the_run_prefix_is_refused(uri):
    with pytest.raises(DeletionRefused):
        confined_step("s3://bucket/cpt/ns/run", uri)


def test_crafted_uri_deletes_nothing_on_s3(s3):
    put_checkpoint(s3, "cpt/ns/victim", 500, {})
    store = S3CheckpointStore(f"s3://{s3.bucket}/cpt/ns/run", s3)
    with pytest.raises(DeletionRefused):
        store.delete(f"s3://{s3.bucket}/cpt/ns/run/../victim/step-00000500")
    assert S3CheckpointStore(f"s3://{s3.bucket}/cpt/ns/victim", s3).list_complete()[0].step == 500


def test_local_store_rotation(tmp_path):
    root = tmp_path / "ns" / "run"
    for step in (500, 1000):
        folder = root / step_dir_name(step)
        folder.mkdir(parents=True)
        (folder / CHECKPOINT_COMPLETE_MARKER).write_text("")
    store = LocalCheckpointStore(root)
    store.delete(str(root / step_dir_name(500)))
    assert [c.step for c in store.list_complete()] == [1000]
    with pytest.raises(DeletionRefused):
        store.delete(str(tmp_path / "ns" / "other" / step_dir_name(500)))


def test_general_score_ranking_keeps_the_most_accurate_checkpoint_of_a_benchmark_run():
    # Accuracy is higher-is-better: the regression (direction-aware) ranks, never the raw score.
    accurate = EvaluatedCheckpoint(500, "s3://b/p/a", 9.0, 0.80, -0.01)
    worse = EvaluatedCheckpoint(1000, "s3://b/p/b", 9.0, 0.77, 0.02)
    newest = EvaluatedCheckpoint(1500, "s3://b/p/c", 9.0, 0.60, 0.25)
    policy = RetentionPolicy(keep_last_n=1, keep_best_k=1, best_metric="generalScore")
    decision = select_checkpoints_to_keep([accurate, worse, newest], policy, THRESHOLD, BASE_PPL)
    assert decision.best == 500 and 1000 in decision.delete, decision
