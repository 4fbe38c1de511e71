"""One control-loop pass: progress and metrics status, checkpoint records recovered from the
checkpoints' own metrics.json, rotation, and the forgetting monitor — with the faults the
issue names (metrics unavailable, storage errors, operator restarts)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from control_helpers import metrics, write_ckpt

from cpt_operator.api.resources import load_manifests
from cpt_operator.control.run_control import (
    CHECKPOINTS_ROTATED,
    FORGETTING,
    METRICS_AVAILABLE,
    ControlInputs,
    control_step,
)
from cpt_operator.control.storage import LocalCheckpointStore, StorageError, step_dir_name
from cpt_trainer.contract.metrics import CHECKPOINT_METRICS_FILE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def legal():
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "legal-cpt"])}
    return res["CPTRun"].spec, res["CheckpointPolicy"].spec  # keepLastN 2, keepBestK 2, milestones 5000




def inputs(spec, policy, status, m, store, now, error=None):
    return ControlInputs("legal-team", "llama3-8b-legal", 1, spec, policy, status, m, error, store, now)


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_metrics_unavailable_deletes_nothing_and_never_halts(tmp_path, legal):
    spec, policy = legal
    for i in range(1, 7):
        write_ckpt(tmp_path, i * 500, 25.0, 0.5)  # all far over the threshold, most not kept by policy
    store = LocalCheckpointStore(tmp_path)
    out = control_step(inputs(spec, policy, {}, None, store, time.time(), "Prometheus at http://x did not answer"))
    assert len(store.list_complete()) == 6
    assert not out.halt and out.deleted == []
    c = cond(out.status_patch, METRICS_AVAILABLE)
    assert (c["status"], c["reason"]) == ("False", "MetricsUnavailable") and "did not answer" in c["message"]


def test_stale_metrics_are_unavailable(tmp_path, legal):
    spec, policy = legal
    now = time.time()
    out = control_step(inputs(spec, policy, {}, metrics(500, 0.5, now - 3600), LocalCheckpointStore(tmp_path), now))
    assert cond(out.status_patch, METRICS_AVAILABLE)["reason"] == "MetricsStale"
    assert not out.halt


def test_healthy_run_rotates_by_policy_and_is_not_halted(tmp_path, legal):
    spec, policy = legal
    domain = {500: 28.0, 1000: 24.0, 1500: 21.0, 2000: 22.0, 2500: 23.0, 3000: 23.5}
    for step, d in domain.items():
        write_ckpt(tmp_path, step, d, 0.01)
    store = LocalCheckpointStore(tmp_path)
    now = time.time()
    first = control_step(inputs(spec, policy, {}, metrics(3000, 0.01, now), store, now))
    # The first pass records; a step is deleted only once a second pass lists it again.
    assert first.deleted == [] and len(store.list_complete()) == 6
    assert all("unconfirmed" in r["keptFor"] for r in first.status_patch["checkpoints"])
    out = control_step(inputs(spec, policy, copy.deepcopy(first.status_patch), metrics(3000, 0.01, now), store, now + 30))
    left = {c.step for c in store.list_complete()}
    assert left == {1500, 2000, 2500, 3000}  # best two (1500, 2000) + last two (2500, 3000)
    assert out.status_patch["bestCheckpoint"]["step"] == 1500
    assert not out.halt and "phase" not in out.status_patch
    assert cond(out.status_patch, FORGETTING)["status"] == "False"
    assert cond(out.status_patch, CHECKPOINTS_ROTATED)["status"] == "True"
    progress = out.status_patch["progress"]
    assert progress["display"] == f"3000/{progress['totalSteps']}" and progress["etaSeconds"] > 0
    deleted = {r["step"] for r in out.status_patch["checkpoints"] if r["deleted"]}
    assert deleted == {500, 1000}


def test_degrading_run_halts_after_patience(tmp_path, legal):
    spec, policy = legal  # patience 3, threshold 0.03, action Halt
    store = LocalCheckpointStore(tmp_path)
    status: dict = {"phase": "Running"}
    now = time.time()
    halted_at = None
    for i, regression in enumerate([0.0, 0.01, 0.05, 0.06, 0.07, 0.08], start=1):
        write_ckpt(tmp_path, i * 500, 25.0 - i, regression)
        out = control_step(inputs(spec, policy, status, metrics(i * 500, regression, now), store, now))
        status = {**status, **copy.deepcopy(out.status_patch)}
        if out.halt:
            halted_at = i * 500
            break
    assert halted_at == 2500  # the third consecutive evaluation over 3 %
    assert status["phase"] == "Halted"
    c = cond(status, FORGETTING)
    assert c["status"] == "True" and "7.00% exceeds the 3.0% threshold" in c["message"] and "best eligible checkpoint: step 1000" in c["message"]
    assert status["bestCheckpoint"]["step"] == 1000
    assert any(reason == "ForgettingThresholdExceeded" for _, reason, _ in out.events)
    assert 1000 in {c.step for c in store.list_complete()}


def test_a_halt_whose_condition_a_stale_writer_dropped_is_not_announced_twice(tmp_path, legal):
    spec, policy = legal
    store = LocalCheckpointStore(tmp_path)
    status: dict = {"phase": "Running"}
    now = time.time()
    for i, regression in enumerate([0.05, 0.06, 0.07], start=1):
        write_ckpt(tmp_path, i * 500, 25.0 - i, regression)
        out = control_step(inputs(spec, policy, status, metrics(i * 500, regression, now), store, now))
        status = {**status, **copy.deepcopy(out.status_patch)}
    assert out.halt and status["phase"] == "Halted"
    # A reconcile working from an older body rewrote the condition list without ours.
    status["conditions"] = [c for c in status["conditions"] if c["type"] != FORGETTING]
    again = control_step(inputs(spec, policy, status, metrics(1500, 0.07, now + 30), store, now + 30))
    assert again.events == [] and not again.halt
    assert cond({**status, **again.status_patch}, FORGETTING)["status"] == "True"  # restored, quietly


def test_warn_action_only_conditions_and_events(tmp_path, legal):
    spec, policy = legal
    spec = spec.model_copy(update={"evaluation": spec.evaluation.model_copy(update={"action": "Warn", "patience": 1})})
    write_ckpt(tmp_path, 500, 20.0, 0.2)
    now = time.time()
    out = control_step(inputs(spec, policy, {"phase": "Running"}, metrics(500, 0.2, now), LocalCheckpointStore(tmp_path), now))
    assert not out.halt and "phase" not in out.status_patch
    assert cond(out.status_patch, FORGETTING)["status"] == "True"
    assert out.events


def test_restart_between_evaluations_records_nothing_twice_and_loses_nothing(tmp_path, legal):
    spec, policy = legal
    store = LocalCheckpointStore(tmp_path)
    now = time.time()
    write_ckpt(tmp_path, 500, 25.0, 0.01)
    first = control_step(inputs(spec, policy, {}, metrics(500, 0.01, now), store, now)).status_patch
    # The operator restarts: the next pass sees the stored status again (twice, as after a replay).
    write_ckpt(tmp_path, 1000, 24.0, 0.02)
    second = control_step(inputs(spec, policy, copy.deepcopy(first), metrics(1000, 0.02, now), store, now)).status_patch
    third = control_step(inputs(spec, policy, copy.deepcopy(second), metrics(1000, 0.02, now), store, now)).status_patch
    assert [r["step"] for r in third["checkpoints"]] == [500, 1000]
    assert [e["step"] for e in third["evaluations"]] == [500, 1000]
    # A pass that missed the scrapes of step 1500 and 2000 still recovers their evaluations from the checkpoints.
    write_ckpt(tmp_path, 1500, 23.0, 0.02)
    write_ckpt(tmp_path, 2000, 22.0, 0.02)
    fourth = control_step(inputs(spec, policy, copy.deepcopy(third), metrics(2000, 0.02, now), store, now)).status_patch
    assert [e["step"] for e in fourth["evaluations"]] == [500, 1000, 1500, 2000]


class FailingStore(LocalCheckpointStore):
    fail = True

    def delete(self, uri: str) -> None:
        if self.fail:
            raise StorageError("S3 delete_objects failed: SlowDown")
        super().delete(uri)


def test_storage_errors_keep_the_set_intact_and_are_retried(tmp_path, legal):
    spec, policy = legal
    for i in range(1, 7):
        write_ckpt(tmp_path, i * 500, 20.0 + i, 0.01)  # the best two are the oldest two
    store = FailingStore(tmp_path)
    now = time.time()
    out = control_step(inputs(spec, policy, {}, metrics(3000, 0.01, now), store, now))  # records
    out = control_step(inputs(spec, policy, out.status_patch, metrics(3000, 0.01, now), store, now))
    assert len(store.list_complete()) == 6 and out.deleted == []
    assert cond(out.status_patch, CHECKPOINTS_ROTATED)["reason"] == "StorageUnavailable"
    store.fail = False
    out = control_step(inputs(spec, policy, out.status_patch, metrics(3000, 0.01, now), store, now))
    assert {c.step for c in store.list_complete()} == {500, 1000, 2500, 3000} and len(out.deleted) == 2


def test_resuming_a_halted_run_is_an_explicit_tenant_action(tmp_path, legal):
    spec, policy = legal
    store = LocalCheckpointStore(tmp_path)
    now = time.time()
    status: dict = {"phase": "Running"}
    for i, regression in enumerate([0.05, 0.06, 0.07], start=1):
        write_ckpt(tmp_path, i * 500, 25.0 - i, regression)
        status.update(copy.deepcopy(control_step(inputs(spec, policy, status, metrics(i * 500, regression, now), store, now)).status_patch))
    assert status["phase"] == "Halted" and status["halt"]["step"] == 1500
    # Without the tenant's annotation the run stays halted, whatever comes next.
    again = control_step(inputs(spec, policy, copy.deepcopy(status), metrics(1500, 0.07, now), store, now))
    assert not again.resumed and again.status_patch.get("phase", "Halted") == "Halted"
    resumed_inputs = inputs(spec, policy, copy.deepcopy(status), metrics(1500, 0.07, now), store, now)
    resumed_inputs.resume_after_step = 1500
    out = control_step(resumed_inputs)
    assert out.resumed and out.status_patch["phase"] == "Running"
    assert cond(out.status_patch, FORGETTING)["reason"] == "ResumedByTenant"


def _with_extension(root: Path, step: int, report: dict) -> None:
    write_ckpt(root, step, 24.0, 0.0)
    path = root / step_dir_name(step) / CHECKPOINT_METRICS_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), "tokenizer_extension": report}))


def test_the_tokenizer_extension_report_becomes_status_and_a_condition(tmp_path, legal):
    spec, policy = legal
    now = time.time()
    helped = {"added": ["licensee", "sublicense"], "tokens_before": 1000, "tokens_after": 900, "token_reduction": 0.1,
              "chars_per_token_before": 3.7, "chars_per_token_after": 4.1, "warning": None}  # fmt: skip
    _with_extension(tmp_path / "a", 500, helped)
    out = control_step(inputs(spec, policy, {}, metrics(500, 0.0, now), LocalCheckpointStore(tmp_path / "a"), now))
    assert out.status_patch["tokenizerExtension"] == {"addedTokens": 2, "tokensBefore": 1000, "tokensAfter": 900, "tokenReduction": 0.1,
                                                      "charsPerTokenBefore": 3.7, "charsPerTokenAfter": 4.1}  # fmt: skip
    c = cond(out.status_patch, "TokenizerExtensionEffective")
    assert (c["status"], c["reason"]) == ("True", "FewerTokens") and "10.0% fewer tokens" in c["message"]
    worse = {**helped, "tokens_after": 1004, "token_reduction": -0.004,
             "warning": "tokenizer extension did not reduce the domain token count: 1000 -> 1004"}  # fmt: skip
    _with_extension(tmp_path / "b", 500, worse)
    out = control_step(inputs(spec, policy, {}, metrics(500, 0.0, now), LocalCheckpointStore(tmp_path / "b"), now))
    c = cond(out.status_patch, "TokenizerExtensionEffective")
    assert (c["status"], c["reason"]) == ("False", "NoTokenReduction") and "1000 -> 1004" in c["message"]
