"""Checkpoint rotation through real S3 error responses.

The control loop's S3CheckpointStore talks to moto through a loopback proxy that answers
chosen requests with genuine S3 errors (503 SlowDown, 500 InternalError), so the failures go
through boto3's own retry and error parsing, not through a fake store. What the bucket holds
is always checked directly on moto: a failed pass deletes nothing it should keep, never
leaves a checkpoint that looks complete while missing files, and the next pass finishes the
job to exactly the policy's kept set.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError
from s3_fault_proxy import S3FaultProxy

from cpt_operator.api.resources import load_manifests
from cpt_operator.control.prometheus import RunMetrics
from cpt_operator.control.run_control import CHECKPOINTS_ROTATED, ControlInputs, ControlOutcome, control_step
from cpt_operator.control.storage import S3CheckpointStore, step_dir_name
from cpt_trainer.contract import metrics as names
from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_METRICS_FILE

REPO = Path(__file__).resolve().parents[2]
NAMESPACE, RUN = "legal-team", "llama3-8b-legal"
PREFIX_KEY = f"cpt/{NAMESPACE}/{RUN}"
BASELINE_DOMAIN = 30.0
FILES = ("model.safetensors", "optimizer.pt", CHECKPOINT_METRICS_FILE, CHECKPOINT_COMPLETE_MARKER)
RETRIES = 2  # botocore's retries={"max_attempts": 2} are retries after the first attempt
ATTEMPTS = 1 + RETRIES  # HTTP requests per failing store call

# step -> (domain perplexity, general regression). The best domain perplexity (2500) forgot too
# much to be eligible as best; so did 4500.
CHECKPOINTS = {
    500: (29.0, 0.0), 1000: (27.0, 0.01), 1500: (24.0, 0.005), 2000: (21.0, 0.02), 2500: (19.0, 0.09), 3000: (22.5, 0.01),
    3500: (20.5, 0.025), 4000: (23.0, 0.01), 4500: (24.5, 0.06), 5000: (25.0, 0.015), 5500: (23.5, 0.012), 6000: (24.0, 0.01),
}  # fmt: skip
# legal-keep-best (keepLastN 2, keepBestK 2 by composite, milestones 5000): best two 3500 and
# 2000, milestone 5000, last two 5500 and 6000.
EXPECTED_KEEP = {2000, 3500, 5000, 5500, 6000}


@pytest.fixture(scope="module")
def legal():
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "legal-cpt"])}
    return res["CPTRun"].spec, res["CheckpointPolicy"].spec


@pytest.fixture
def s3(s3):
    """Moto direct, with a bucket of its own (the shared fixture names buckets by a test name's first 40 characters)."""
    s3.bucket = f"s3-faults-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=s3.bucket)
    return s3


@pytest.fixture
def proxy(s3_endpoint):
    with S3FaultProxy(s3_endpoint) as p:
        yield p


@pytest.fixture
def store(s3, proxy):
    """The operator's store, its boto3 client pointed at the fault proxy (the `s3` fixture is moto direct)."""
    client = boto3.client(
        "s3", endpoint_url=proxy.url, region_name="us-east-1", config=Config(retries={"mode": "standard", "max_attempts": RETRIES})
    )
    return S3CheckpointStore(f"s3://{s3.bucket}/{PREFIX_KEY}", client)


def reference_keep(spec, policy, steps) -> set[int]:
    """The legal policy stated plainly: newest, last N, best K eligible by composite, milestones."""
    threshold = spec.evaluation.forgetting_threshold
    w_domain, w_general = policy.composite_weights.domain, policy.composite_weights.general

    def composite(step):
        domain, regression = CHECKPOINTS[step]
        return w_domain * (BASELINE_DOMAIN - domain) / BASELINE_DOMAIN - w_general * max(0.0, regression)

    steps = sorted(steps)
    keep = {steps[-1], *steps[-policy.keep_last_n :]}
    eligible = sorted((s for s in steps if CHECKPOINTS[s][1] <= threshold), key=lambda s: (-composite(s), s))
    keep |= set(eligible[: max(policy.keep_best_k, 1)])
    keep |= {s for s in steps if policy.milestone_interval and s % policy.milestone_interval == 0}
    return keep


def put_checkpoints(s3, steps) -> None:
    """Complete checkpoints written straight to moto, the COMPLETE marker last (as the trainer does)."""
    for step in steps:
        domain, regression = CHECKPOINTS[step]
        folder = f"{PREFIX_KEY}/{step_dir_name(step)}"
        metrics = {"step": step, "domain_perplexity": domain, "general_scores": {"general-ppl": 10 * (1 + regression)},
                   "general_regression": regression, "baseline_domain_perplexity": BASELINE_DOMAIN}  # fmt: skip
        s3.put_object(Bucket=s3.bucket, Key=f"{folder}/model.safetensors", Body=b"weights-%d" % step)
        s3.put_object(Bucket=s3.bucket, Key=f"{folder}/optimizer.pt", Body=b"optimizer-%d" % step)
        s3.put_object(Bucket=s3.bucket, Key=f"{folder}/{CHECKPOINT_METRICS_FILE}", Body=json.dumps(metrics).encode())
        s3.put_object(Bucket=s3.bucket, Key=f"{folder}/{CHECKPOINT_COMPLETE_MARKER}", Body=b"")


def bucket_keys(s3) -> set[str]:
    """Every key of the bucket, listed on moto directly (not through the proxy)."""
    keys: set[str] = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        keys |= {o["Key"] for o in page.get("Contents", [])}
    return keys


def folders(s3) -> dict[int, set[str]]:
    """step -> the file names its folder still holds."""
    out: dict[int, set[str]] = {}
    for key in bucket_keys(s3):
        folder, name = key[len(PREFIX_KEY) + 1 :].split("/", 1)
        out.setdefault(int(folder.removeprefix("step-")), set()).add(name)
    return out


def complete_steps(s3) -> set[int]:
    return {step for step, names_ in folders(s3).items() if CHECKPOINT_COMPLETE_MARKER in names_}


def assert_nothing_looks_complete_but_is_partial(s3) -> None:
    for step, present in folders(s3).items():
        if CHECKPOINT_COMPLETE_MARKER in present:
            assert present == set(FILES), f"step {step} still has its COMPLETE marker but only {sorted(present)}"


def run_metrics(step: int, now: float) -> RunMetrics:
    m = RunMetrics(newest_timestamp=now)
    m.values = {names.STEP.name: step, names.TOKENS_SEEN.name: step * 2_097_152, names.TOKENS_PER_SECOND.name: 500_000.0,
                names.EVAL_STEP.name: step, names.GENERAL_REGRESSION.name: 0.01, names.DOMAIN_PERPLEXITY.name: 24.0}  # fmt: skip
    m.general_scores = {"general-ppl": 10.1}
    return m


def one_pass(legal, status: dict, store: S3CheckpointStore, step: int) -> tuple[ControlOutcome, dict]:
    """One control pass; returns the outcome and the status after the caller applied its patch."""
    spec, policy = legal
    now = time.time()
    out = control_step(ControlInputs(NAMESPACE, RUN, 1, spec, policy, copy.deepcopy(status), run_metrics(step, now), None, store, now))
    return out, {**status, **copy.deepcopy(out.status_patch)}


def first_pass(legal, store: S3CheckpointStore, step: int) -> dict:
    """A first pass: it records what is listed and deletes nothing (a step goes only once a
    second pass lists it again)."""
    out, status = one_pass(legal, {}, store, step)
    assert out.deleted == []
    return status


def rotated(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == CHECKPOINTS_ROTATED)


def records(status: dict) -> dict[int, dict]:
    return {int(r["step"]): r for r in status["checkpoints"]}


def uri(store: S3CheckpointStore, step: int) -> str:
    return f"{store.prefix}/{step_dir_name(step)}"


def test_reference_policy_matches_the_fixture_data(legal):
    spec, policy = legal
    assert reference_keep(spec, policy, CHECKPOINTS) == EXPECTED_KEEP


def test_s3_delete_objects_errors_keep_every_checkpoint_until_storage_recovers(s3, proxy, store, legal):
    put_checkpoints(s3, CHECKPOINTS)
    before = bucket_keys(s3)
    to_delete = sorted(set(CHECKPOINTS) - EXPECTED_KEEP)
    status = first_pass(legal, store, 6000)
    proxy.arm("DeleteObjects", status=500, code="InternalError", message="We encountered an internal error. Please try again.")

    out, status = one_pass(legal, status, store, 6000)
    assert bucket_keys(s3) == before  # every checkpoint, every file
    assert out.deleted == []
    assert proxy.failed["DeleteObjects"] == ATTEMPTS * len(to_delete)  # each deletion tried, each retried by boto
    assert proxy.forwarded["DeleteObjects"] == 0
    cond = rotated(status)
    assert (cond["status"], cond["reason"]) == ("False", "StorageUnavailable")
    assert "InternalError" in cond["message"]
    assert sorted(records(status)) == sorted(CHECKPOINTS)
    assert not any(r["deleted"] for r in status["checkpoints"])

    proxy.disarm()
    out, status = one_pass(legal, status, store, 6000)
    assert proxy.failed["DeleteObjects"] == ATTEMPTS * len(to_delete)  # no new failures
    assert complete_steps(s3) == reference_keep(*legal, CHECKPOINTS) == EXPECTED_KEEP
    assert set(folders(s3)) == EXPECTED_KEEP  # deleted folders are gone entirely
    assert all(present == set(FILES) for present in folders(s3).values())
    assert {6000, status["bestCheckpoint"]["step"]} <= complete_steps(s3) and status["bestCheckpoint"]["step"] == 3500
    assert sorted(out.deleted) == sorted(uri(store, s) for s in to_delete)
    assert {s for s, r in records(status).items() if r["deleted"]} == set(to_delete)
    cond = rotated(status)
    assert (cond["status"], cond["reason"]) == ("True", "Rotated")


@pytest.mark.parametrize(
    ("kind", "http_status", "code"),
    [("ListObjectsV2", 503, "SlowDown"), ("GetObject", 500, "InternalError")],
    ids=["list-slowdown", "get-internal-error"],
)
def test_s3_listing_or_reading_errors_delete_nothing_and_keep_the_records(s3, proxy, store, legal, kind, http_status, code):
    first, later = [s for s in CHECKPOINTS if s <= 4000], [s for s in CHECKPOINTS if s > 4000]
    put_checkpoints(s3, first)
    _, status = one_pass(legal, first_pass(legal, store, 4000), store, 4000)  # healthy passes record the first eight and rotate them
    assert rotated(status)["status"] == "True"
    assert complete_steps(s3) == reference_keep(*legal, first)
    recorded = copy.deepcopy(status["checkpoints"])
    put_checkpoints(s3, later)
    before = bucket_keys(s3)

    proxy.reset_counters()
    proxy.arm(kind, status=http_status, code=code)
    out, status = one_pass(legal, status, store, 6000)
    assert proxy.failed[kind] == ATTEMPTS  # the first failing call aborts the listing
    assert bucket_keys(s3) == before and out.deleted == []
    assert proxy.forwarded["DeleteObjects"] == proxy.failed["DeleteObjects"] == 0
    cond = rotated(status)
    assert (cond["status"], cond["reason"]) == ("False", "StorageUnavailable") and code in cond["message"]
    # The records of the healthy pass are all still there, with what was deleted and where.
    assert status["checkpoints"] == recorded  # unchanged, keptFor and scores included
    assert status["bestCheckpoint"]["step"] == 3500  # from the healthy pass, not dropped

    proxy.disarm()
    _, status = one_pass(legal, status, store, 6000)  # records the later ones (and rotates the first eight)
    out, status = one_pass(legal, status, store, 6000)  # ... and rotates them too
    assert complete_steps(s3) == reference_keep(*legal, CHECKPOINTS) == EXPECTED_KEEP
    assert set(folders(s3)) == EXPECTED_KEEP
    assert sorted(records(status)) == sorted(CHECKPOINTS)
    assert {s for s, r in records(status).items() if not r["deleted"]} == EXPECTED_KEEP
    assert rotated(status)["status"] == "True" and status["bestCheckpoint"]["step"] == 3500


@pytest.mark.parametrize(
    ("failing_call", "victim_state"),
    [(2, "half-deleted"), (3, "intact")],
    ids=["files-of-first-checkpoint", "marker-of-second-checkpoint"],
)
def test_s3_error_midway_through_deletions_loses_nothing_kept_and_is_finished_later(s3, proxy, store, legal, failing_call, victim_state):
    """Each deletion is two DeleteObjects calls (the COMPLETE marker, then the rest); one call fails for good."""
    put_checkpoints(s3, CHECKPOINTS)
    to_delete = sorted(set(CHECKPOINTS) - EXPECTED_KEEP)  # deleted in step order: 500 (calls 1, 2), 1000 (3, 4), ...
    victim = to_delete[(failing_call - 1) // 2]
    proxy.arm("DeleteObjects", status=503, code="ServiceUnavailable", message="Service is unable to handle request.",
              after=failing_call - 1, times=ATTEMPTS)  # fmt: skip

    out, status = one_pass(legal, first_pass(legal, store, 6000), store, 6000)
    assert proxy.failed["DeleteObjects"] == ATTEMPTS
    cond = rotated(status)
    assert (cond["status"], cond["reason"]) == ("False", "StorageUnavailable")
    assert sorted(out.deleted) == sorted(uri(store, s) for s in to_delete if s != victim)
    assert records(status)[victim]["deleted"] is False
    held = folders(s3)
    assert all(held.get(s) == set(FILES) for s in EXPECTED_KEEP)  # nothing the policy keeps is touched
    assert_nothing_looks_complete_but_is_partial(s3)
    assert set(held) == EXPECTED_KEEP | {victim}  # every other deletion went through, entirely
    if victim_state == "half-deleted":
        assert held[victim] == set(FILES) - {CHECKPOINT_COMPLETE_MARKER}  # marker first: no longer complete
        assert victim not in {c.step for c in store.list_complete()}
    else:
        assert held[victim] == set(FILES)

    proxy.disarm()
    out, status = one_pass(legal, status, store, 6000)
    assert out.deleted == [uri(store, victim)]  # the retry pass finishes the job, from the recorded status
    assert set(folders(s3)) == complete_steps(s3) == reference_keep(*legal, CHECKPOINTS)
    assert_nothing_looks_complete_but_is_partial(s3)
    assert {s for s, r in records(status).items() if r["deleted"]} == set(to_delete)
    assert rotated(status)["status"] == "True"


def test_single_s3_slowdown_is_absorbed_by_the_boto_retry(s3, proxy, store, legal):
    put_checkpoints(s3, CHECKPOINTS)
    status = first_pass(legal, store, 6000)
    proxy.arm("DeleteObjects", status=503, code="SlowDown", times=1)
    out, status = one_pass(legal, status, store, 6000)
    assert proxy.failed["DeleteObjects"] == 1
    assert proxy.forwarded["DeleteObjects"] == 2 * len(set(CHECKPOINTS) - EXPECTED_KEEP)
    assert complete_steps(s3) == set(folders(s3)) == EXPECTED_KEEP
    assert rotated(status)["status"] == "True" and len(out.deleted) == len(CHECKPOINTS) - len(EXPECTED_KEEP)


def test_s3_connection_dropped_on_get_object_is_storage_unavailable(s3, proxy, store, legal):
    put_checkpoints(s3, CHECKPOINTS)
    before = bucket_keys(s3)
    proxy.arm("GetObject", mode="reset")  # the connection closes without an answer, every attempt
    try:
        out, status = one_pass(legal, {}, store, 6000)
    finally:
        assert proxy.failed["GetObject"] == ATTEMPTS
        assert bucket_keys(s3) == before
    assert out.deleted == []
    cond = rotated(status)
    assert (cond["status"], cond["reason"]) == ("False", "StorageUnavailable")
