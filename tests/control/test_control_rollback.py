"""action Rollback in the control loop (pure pass over a real checkpoint folder): a crossing
rolls the run back to its best eligible checkpoint with the mix and learning rate scaled, the
attempts are counted and capped, and a run that keeps forgetting ends Halted with its best
checkpoint kept. The trainer config the run restarts with carries the rollback."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from control_helpers import metrics, write_ckpt

from cpt_operator.api.resources import load_manifests
from cpt_operator.control.run_control import FORGETTING, ControlInputs, control_step
from cpt_operator.control.storage import LocalCheckpointStore, step_dir_name
from cpt_operator.decide.rollback import abandoned, plan_rollback, settings_after
from cpt_operator.render.trainer_config import render_trainer_config
from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def legal():
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "legal-cpt"])}
    spec = res["CPTRun"].spec
    spec.evaluation.action = "Rollback"
    spec.evaluation.patience = 2
    spec.evaluation.rollback.max_attempts = 2
    return spec, res["CheckpointPolicy"].spec, res




def run_pass(spec, policy, status, m, store, now):
    out = control_step(ControlInputs("legal-team", "llama3-8b-legal", 1, spec, policy, status, m, None, store, now))
    return out, {**status, **copy.deepcopy(out.status_patch)}


def test_a_crossing_rolls_back_to_the_best_eligible_checkpoint_with_scaled_mix_and_lr(tmp_path, legal):
    spec, policy, _ = legal
    store = LocalCheckpointStore(tmp_path)
    status: dict = {"phase": "Running"}
    now = time.time()
    out = None
    for i, regression in enumerate([0.0, 0.01, 0.05, 0.06], start=1):
        write_ckpt(tmp_path, i * 500, 25.0 - i, regression)
        out, status = run_pass(spec, policy, status, metrics(i * 500, regression, now), store, now)
    assert out.rollback is not None and not out.halt
    assert out.rollback.from_step == status["bestCheckpoint"]["step"] == 1000  # the best eligible (within 3 %) by the policy
    (record,) = status["rollbacks"]
    assert record["attempt"] == 1 and record["fromStep"] == 1000 and record["atStep"] == 2000 and record["outcome"] == "Restarting"
    assert record["alpha"] == pytest.approx(spec.mixing.alpha * 0.5) and record["learningRate"] == pytest.approx(spec.training.learning_rate * 0.5)
    assert {r["step"] for r in status["checkpoints"]} == {500, 1000}  # the abandoned branch is not recorded
    assert max(e["step"] for e in status["evaluations"]) == 1000
    assert cond(status)["reason"] == "RollingBack" and "attempt 1 of 2" in cond(status)["message"]
    assert any(reason == "RollingBack" for _, reason, _ in out.events)
    assert status["phase"] != "Halted"
    # While the job restarts, the old trainer's last readings decide nothing.
    out, status = run_pass(spec, policy, status, metrics(2000, 0.06, now), store, now + 30)
    assert out.rollback is None and not out.halt and len(status["rollbacks"]) == 1
    assert max(e["step"] for e in status["evaluations"]) == 1000
    assert {r["step"] for r in status["checkpoints"]} == {500, 1000}  # listed again, still abandoned (attempt 0 after 1000)


def cond(status):
    return next(c for c in status["conditions"] if c["type"] == FORGETTING)


def test_the_config_after_a_rollback_resumes_from_its_step_with_the_new_settings(legal):
    spec, policy, _ = legal
    corpora = {r.name: r.spec for r in load_manifests([REPO / "examples" / "legal-cpt"]) if r.kind == "Corpus"}
    rollbacks = [{"attempt": 1, "fromStep": 1000, "outcome": "Resumed"}, {"attempt": 2, "fromStep": 500, "outcome": "Restarting"}]
    config = render_trainer_config("legal-team", "llama3-8b-legal", spec, corpora, policy, rollbacks=rollbacks)
    assert config.checkpoint.resume_step == 500 and config.attempt == 2
    assert config.data.alpha == pytest.approx(spec.mixing.alpha * 0.25)
    assert config.optim.learning_rate == pytest.approx(spec.training.learning_rate * 0.25)
    assert config.optim.min_learning_rate == pytest.approx(spec.training.min_learning_rate * 0.25)
    plain = render_trainer_config("legal-team", "llama3-8b-legal", spec, corpora, policy)
    assert plain.checkpoint.resume_step is None and plain.attempt == 0 and plain.data.alpha == spec.mixing.alpha


def test_attempts_are_capped_and_a_run_that_keeps_forgetting_ends_halted_with_its_best_kept(tmp_path, legal):
    spec, policy, _ = legal
    store = LocalCheckpointStore(tmp_path)
    status: dict = {"phase": "Running"}
    now = time.time()
    step = 0
    rollbacks_seen = 0
    for attempt in range(3):
        # Each attempt (after a rollback: from the best checkpoint) forgets again.
        base = status["rollbacks"][-1]["fromStep"] if status.get("rollbacks") else 0
        if status.get("rollbacks"):
            status["rollbacks"][-1]["outcome"] = "Resumed"  # what the run's reconcile writes once restarted
            for old in [s for s in (500, 1000, 1500, 2000, 2500) if s > base]:
                (tmp_path / step_dir_name(old) / CHECKPOINT_COMPLETE_MARKER).unlink(missing_ok=True)  # the trainer removes them
        regressions = [0.0, 0.01, 0.05, 0.06] if attempt == 0 else [0.05, 0.06]
        for k, regression in enumerate(regressions, start=1):
            step = base + k * 500
            write_ckpt(tmp_path, step, 25.0 - step / 1000, regression, attempt)
            out, status = run_pass(spec, policy, status, metrics(step, regression, now), store, now)
            if out.rollback is not None or out.halt:
                break
        if out.rollback is not None:
            rollbacks_seen += 1
            out, status = run_pass(spec, policy, status, metrics(step, regression, now), store, now + 1)  # the restart pass
        if out.halt:
            break
    assert rollbacks_seen == 2 and out.halt
    assert [r["outcome"] for r in status["rollbacks"]] == ["ForgotAgain", "ForgotAgain"]
    assert status["phase"] == "Halted" and "2 of 2 rollbacks used: halted" in cond(status)["message"]
    best = status["bestCheckpoint"]["step"]
    assert best == status["rollbacks"][0]["fromStep"] == status["rollbacks"][1]["fromStep"]  # nothing better since
    assert best in {c.step for c in store.list_complete()}
    # A pass after the cap halt (phase Halted, same readings) changes nothing it decided:
    # status.halt keeps action Halt, the condition keeps the cap text, no second Event.
    halt, condition = copy.deepcopy(status["halt"]), copy.deepcopy(cond(status))
    assert halt["action"] == "Halt"
    for later in (1, 2):
        out, status = run_pass(spec, policy, status, metrics(step, regression, now), store, now + 10 * later)
        assert status["halt"] == halt and cond(status) == condition
        assert not out.halt and out.rollback is None and status["phase"] == "Halted"
        assert not [e for e in out.events if e[1] in ("ForgettingThresholdExceeded", "RollingBack")], out.events
        assert len(status["rollbacks"]) == 2
    # A stale writer dropped the condition: it is put back with the cap text, status.halt untouched.
    status["conditions"] = [c for c in status["conditions"] if c["type"] != FORGETTING]
    out, status = run_pass(spec, policy, status, metrics(step, regression, now), store, now + 30)
    assert status["halt"] == halt and cond(status)["reason"] == "ForgettingThresholdExceeded"
    assert "2 of 2 rollbacks used: halted" in cond(status)["message"] and not out.halt


def test_no_eligible_checkpoint_halts_instead_of_rolling_back(legal):
    spec, _, _ = legal
    plan, why = plan_rollback(spec, [], None, 500, 0.2)
    assert plan is None and "no eligible checkpoint" in why


def test_settings_compound_per_attempt_and_abandoned_means_an_earlier_attempt_after_from_step(legal):
    spec, _, _ = legal
    two = settings_after(spec, [{"fromStep": 1000}, {"fromStep": 500}])
    assert two.attempt == 2 and two.resume_step == 500
    assert two.alpha == pytest.approx(spec.mixing.alpha * 0.25)
    rollbacks = [{"fromStep": 1000}]
    assert abandoned(1500, 0, rollbacks) and not abandoned(1500, 1, rollbacks) and not abandoned(1000, 0, rollbacks)
    assert not abandoned(1500, None, [])
