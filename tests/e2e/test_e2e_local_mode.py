"""`cpt run-local` end to end on CPU: curation, training from a locally built base model, the
metrics endpoint, checkpoint rotation and the forgetting monitor, then the report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cpt_operator.control.storage import LocalCheckpointStore
from cpt_operator.decide.retention import EvaluatedCheckpoint, RetentionPolicy, select_checkpoints_to_keep

REPO = Path(__file__).resolve().parents[2]
# The first test also runs the session fixture's two demos (up to 900 s each, conftest.run_local):
# the suite-wide 600 s would end it on a loaded machine (seen: two CI runs sharing 2 cores).
pytestmark = pytest.mark.timeout(2 * 900 + 300)


def state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def series(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def test_domain_perplexity_falls_and_the_default_run_succeeds(local_runs):
    s = series(local_runs["default"])
    assert state(local_runs["default"])["status"]["phase"] == "Succeeded"
    assert s["steps"][0] == 0
    assert s["domain_perplexity"][-1] < s["domain_perplexity"][0]


def test_general_score_measured_at_baseline_and_every_evaluation(local_runs):
    st = state(local_runs["default"])
    s = series(local_runs["default"])
    interval = st["settings"]["evalInterval"]
    total = st["settings"]["totalSteps"]
    expected = sorted({0, *range(interval, total + 1, interval), total})
    assert s["steps"] == expected
    assert all(g is not None for g in s["general_score"])


def test_checkpoints_on_disk_are_exactly_the_policy_set(local_runs):
    for key in ("default", "aggressive"):
        st = state(local_runs[key])
        status = st["status"]
        prefix = Path(status["checkpoints"][0]["uri"]).parent
        on_disk = {c.step for c in LocalCheckpointStore(prefix).list_complete()}
        ckpts = [
            EvaluatedCheckpoint(r["step"], r["uri"], r.get("domainPerplexity"), r.get("generalScore"), r.get("generalRegression"))
            for r in status["checkpoints"]
        ]
        example = {"default": "local", "aggressive": "local-forgetting"}[key]
        policy_doc = yaml.safe_load((REPO / "examples" / example / "02-checkpointpolicy.yaml").read_text())["spec"]
        policy = RetentionPolicy(policy_doc["keepLastN"], policy_doc["keepBestK"], policy_doc["bestMetric"], policy_doc.get("milestoneInterval", 0))
        decision = select_checkpoints_to_keep(ckpts, policy, st["settings"]["forgettingThreshold"], st["baseline"]["domain_perplexity"])
        assert on_disk == set(decision.keep), key
        assert {r["step"] for r in status["checkpoints"] if not r["deleted"]} == on_disk
        assert len(status["checkpoints"]) > len(on_disk)  # rotation deleted something


def test_aggressive_configuration_rolls_back_to_its_best_checkpoint_and_default_does_not(local_runs):
    default = state(local_runs["default"])["status"]
    aggressive = state(local_runs["aggressive"])["status"]
    assert default["phase"] == "Succeeded" and not default.get("halt") and not default.get("rollbacks")
    # Pure domain data at a high learning rate crosses the threshold: action Rollback (maxAttempts 1).
    (rollback,) = aggressive["rollbacks"]
    run = yaml.safe_load((REPO / "examples" / "local-forgetting" / "03-cptrun.yaml").read_text())["spec"]
    assert rollback["attempt"] == 1 and rollback["fromStep"] < rollback["atStep"]
    assert rollback["regression"] > 0.03
    assert rollback["alpha"] == run["mixing"]["alpha"] * run["evaluation"]["rollback"]["alphaFactor"]
    assert abs(rollback["learningRate"] - run["training"]["learningRate"] * run["evaluation"]["rollback"]["learningRateFactor"]) < 1e-12
    # The trainer restarted from that checkpoint, removing the abandoned branch first ...
    log = (local_runs["aggressive"] / "train.log").read_text()
    assert f"rollback to step-{rollback['fromStep']:08d}: removed the abandoned branch's checkpoints" in log
    assert f"resuming from checkpoint step-{rollback['fromStep']:08d}" in log
    # The new branch trains at the scaled learning rate: every point the report keeps after
    # fromStep (the runner drops the abandoned branch's) is at most learningRate x factor, which the
    # first branch exceeded before it.
    lr_cap = run["training"]["learningRate"] * run["evaluation"]["rollback"]["learningRateFactor"]
    training = series(local_runs["aggressive"])["training"]
    points = list(zip(training["steps"], training["learning_rate"]))
    new_branch = [lr for step, lr in points if step > rollback["fromStep"]]
    first_branch = [lr for step, lr in points if step <= rollback["fromStep"]]
    assert new_branch and max(new_branch) <= lr_cap * (1 + 1e-6), (lr_cap, points)
    assert first_branch and max(first_branch) > lr_cap, (lr_cap, points)
    # ... and every checkpoint recorded after it is the new branch's (attempt 1).
    after = [r for r in aggressive["checkpoints"] if r["step"] > rollback["fromStep"]]
    assert after and all(r.get("attempt") == 1 for r in after)
    # It either recovered and finished, or forgot again and was halted with its best kept.
    assert aggressive["phase"] in ("Succeeded", "Halted")
    if aggressive["phase"] == "Halted":
        assert rollback["outcome"] == "ForgotAgain"
        best = aggressive["bestCheckpoint"]
        record = next(r for r in aggressive["checkpoints"] if r["step"] == best["step"])
        assert record["generalRegression"] <= 0.03 and not record["deleted"]
    else:
        assert rollback["outcome"] == "Resumed" and aggressive["progress"]["step"] == aggressive["progress"]["totalSteps"]


def test_report_files_and_series(local_runs):
    for key in ("default", "aggressive"):
        run_dir = local_runs[key]
        for name in ("report.md", "report.png", "report.json"):
            assert (run_dir / name).stat().st_size > 0
        s = series(run_dir)
        assert len(s["steps"]) == len(s["domain_perplexity"]) == len(s["general_score"]) >= 3
        assert s["best_checkpoint"] in {k["step"] for k in s["kept_checkpoints"]}
        # The cloze benchmark built from shipped text, scored at every evaluation through the harness.
        bench = s["benchmarks"]["cloze"]
        assert len(bench["steps"]) >= 3 and all(0.0 <= a <= 1.0 for a in bench["accuracy"]) and all(e > 0 for e in bench["stderr"])
        assert bench["baseline"] > 0.25 + 0.1, bench  # the pretrained base knows general text: well above 4-choice chance
        assert len(s["training"]["steps"]) >= 3 and all(lr is not None for lr in s["training"]["learning_rate"])
    rollbacks = series(local_runs["aggressive"])["rollbacks"]
    assert len(rollbacks) == 1 and rollbacks[0]["from_step"] < rollbacks[0]["at_step"]
    assert series(local_runs["default"])["halt_step"] is None and series(local_runs["default"])["rollbacks"] == []
    md = (local_runs["aggressive"] / "report.md").read_text()
    assert f"Rollback 1 at step {rollbacks[0]['at_step']}: back to step {rollbacks[0]['from_step']}" in md and "Checkpoints kept" in md


def test_cpt_report_regenerates_the_report(local_runs):
    run_dir = local_runs["default"]
    (run_dir / "report.json").unlink()
    result = subprocess.run([sys.executable, "-m", "cpt_operator.cli", "report", str(run_dir)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert series(run_dir)["steps"][0] == 0


def test_rerun_of_a_finished_run_is_a_no_op(local_runs, tmp_path):
    # The same command again: the base model and corpora are cached and the run is already done.
    result = subprocess.run(
        [sys.executable, "-m", "cpt_operator.cli", "run-local", str(REPO / "examples" / "local"), "--workdir", str(local_runs["workdir"])],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "already Succeeded" in result.stdout
