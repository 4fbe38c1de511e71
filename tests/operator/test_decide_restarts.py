"""decide/restarts.py and its use in decide/run.py: the operator caps a PyTorchJob's restarts
itself (the training operator's backoffLimit does not count restarts under ExitCode). Pure: a
job's conditions and the run's status in, the restart record, the stop and the status out."""

from __future__ import annotations

import copy
from typing import Any

from cpt_operator import conditions as c
from cpt_operator.decide.restarts import count_restarts, last_exit_from_pods, limit_message, newest_checkpoint_step
from cpt_operator.decide.run import decide_run, run_status
from cpt_operator.decide.run_phase import JobView
from test_decide_run import SETTINGS, created_job, facts

LIMIT1 = SETTINGS.model_copy(update={"backoff_limit": 1})
T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z", "2026-01-01T00:09:00Z"


def restarting(at: str, message: str = "job docs-cpt is restarting because Master replica(s) failed.") -> list[dict[str, Any]]:
    return [{"type": "Created", "status": "True", "lastTransitionTime": T0},
            {"type": "Restarting", "status": "True", "lastTransitionTime": at, "reason": "PyTorchJobRestarting", "message": message}]  # fmt: skip


RUNNING = [{"type": "Created", "status": "True", "lastTransitionTime": T0}, {"type": "Running", "status": "True", "lastTransitionTime": T1}]


# ------------------------------------------------------------------ counting


def test_no_restart_writes_no_record() -> None:
    r = count_restarts(None, RUNNING, 0, 3)
    assert r.record is None and r.count == 0 and not r.exceeded


def test_a_restart_counts_once_however_often_it_is_looked_at() -> None:
    first = count_restarts(None, restarting(T1), 0, 3)
    assert first.record == {"count": 1, "lastRestartTime": T1, "sinceCheckpointStep": 0} and first.new
    again = count_restarts(first.record, restarting(T1), 0, 3)
    assert again.record == first.record and not again.new
    # the job runs again (the training operator replaces Restarting by Running): nothing counted, record kept
    assert count_restarts(first.record, RUNNING, 0, 3).record == first.record


def test_each_new_restarting_condition_counts_and_an_older_one_does_not() -> None:
    rec = count_restarts(None, restarting(T1), 0, 3).record
    second = count_restarts(rec, restarting(T2), 0, 3)
    assert second.count == 2 and second.record is not None and second.record["lastRestartTime"] == T2
    assert count_restarts(second.record, restarting(T1), 0, 3).count == 2  # a stale (cached) job body


def test_over_the_limit_is_exceeded_and_a_limit_of_zero_allows_no_restart() -> None:
    rec = count_restarts(None, restarting(T1), 0, 1).record
    assert not count_restarts(None, restarting(T1), 0, 1).exceeded
    assert count_restarts(rec, restarting(T2), 0, 1).exceeded
    assert count_restarts(None, restarting(T1), 0, 0).exceeded


def test_a_new_checkpoint_since_the_count_started_starts_it_again() -> None:
    rec = count_restarts(None, restarting(T1), 500, 1).record
    assert rec == {"count": 1, "lastRestartTime": T1, "sinceCheckpointStep": 500}
    # the run trained and saved step 1000 before failing again: not a crash loop
    progressed = count_restarts(rec, restarting(T2), 1000, 1)
    assert progressed.record == {"count": 1, "lastRestartTime": T2, "sinceCheckpointStep": 1000} and not progressed.exceeded
    # progress seen on a look without a new restart: the count is 0, the restart already counted stays counted
    reset = count_restarts(rec, restarting(T1), 1000, 1)
    assert reset.record == {"count": 0, "lastRestartTime": T1, "sinceCheckpointStep": 1000} and not reset.new
    assert count_restarts(reset.record, restarting(T1), 1000, 1).record == reset.record  # stable: no write each look


def test_the_newest_checkpoint_counts_deleted_ones_too() -> None:
    status = {"checkpoints": [{"step": 500, "uri": "u"}, {"step": 1500, "uri": "u", "deleted": True}, {"step": 1000, "uri": "u"}]}
    assert newest_checkpoint_step(status) == 1500 and newest_checkpoint_step({}) == 0


def test_the_message_says_what_happened_what_was_kept_and_what_to_do() -> None:
    rec = count_restarts(None, restarting(T1), 0, 1).record
    r = count_restarts(rec, restarting(T2), 0, 1)
    text = limit_message(r, "docs-cpt", "pod docs-cpt-master-0 exited 137 (OOMKilled)")
    for part in ("restarted 2 times without writing a checkpoint", "backoffLimit (1)", "no pod holds GPUs",
                 "checkpoints are kept", "Master replica(s) failed", "exited 137 (OOMKilled)", "create a new CPTRun"):  # fmt: skip
        assert part in text, (part, text)


def test_the_last_exit_is_read_from_a_pod_that_still_shows_it() -> None:
    def pod(name: str, state: dict[str, Any], container: str = "pytorch") -> dict[str, Any]:
        return {"metadata": {"name": name}, "status": {"containerStatuses": [{"name": container, "state": state}]}}

    pods = [pod("w-0", {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-01-01T00:01:00Z"}}),
            pod("m-0", {"terminated": {"exitCode": 139, "reason": "Error", "message": "segfault", "finishedAt": "2026-01-01T00:02:00Z"}}),
            pod("x-0", {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:09:00Z"}}, container="sidecar"),
            pod("r-0", {"running": {}})]  # fmt: skip
    assert last_exit_from_pods(pods) == "pod m-0 exited 139 (Error): segfault"
    assert last_exit_from_pods([pod("r-0", {"running": {}})]) is None


# ------------------------------------------------------------------ in the run's decision


def job_with(conditions: list[dict[str, Any]], suspend: bool = False) -> dict[str, Any]:
    job = copy.deepcopy(created_job())
    job["spec"]["runPolicy"]["suspend"] = suspend
    job["status"] = {"conditions": conditions}
    return job


def test_a_run_over_the_limit_is_stopped_and_fails_with_the_reason() -> None:
    status = {"phase": "Restarting", "restarts": {"count": 1, "lastRestartTime": T1, "sinceCheckpointStep": 0}}
    f = facts(status=status, job=job_with(restarting(T2)), settings=LIMIT1)
    d = decide_run(f)
    assert d.want_stopped is True and d.restart_count is not None
    assert d.status["restarts"] == {"count": 2, "lastRestartTime": T2, "sinceCheckpointStep": 0}
    out = run_status(f, d, JobView.from_body(f.job), halted=False)  # type: ignore[arg-type]
    assert out["phase"] == "Failed" and out["completedAt"] == f.now
    failed = c.find_condition(out["conditions"], c.FAILED)
    assert failed is not None and failed["status"] == "True" and failed["reason"] == c.RESTART_LIMIT_EXCEEDED
    assert "restarted 2 times" in failed["message"]
    assert c.find_condition(out["conditions"], c.RUNNING)["status"] == "False"  # type: ignore[index]


def test_a_restart_within_the_limit_is_recorded_and_the_job_left_running() -> None:
    f = facts(status={"phase": "Running"}, job=job_with(restarting(T1)), settings=LIMIT1)
    d = decide_run(f)
    assert d.want_stopped is False and d.restart_limit is None
    assert d.status["restarts"] == {"count": 1, "lastRestartTime": T1, "sinceCheckpointStep": 0}
    assert run_status(f, d, JobView.from_body(f.job), halted=False)["phase"] == "Restarting"  # type: ignore[arg-type]


def test_a_run_failed_by_the_limit_stays_failed_and_its_job_stays_stopped() -> None:
    first = facts(status={"phase": "Restarting", "restarts": {"count": 1, "lastRestartTime": T1, "sinceCheckpointStep": 0}},
                  job=job_with(restarting(T2)), settings=LIMIT1)  # fmt: skip
    recorded = run_status(first, decide_run(first), JobView.from_body(first.job), halted=False)  # type: ignore[arg-type]
    # Later looks: the job suspended (pods gone), then started again by someone else (Kueue, a hand edit).
    for job in (job_with(RUNNING[:1] + [{"type": "Suspended", "status": "True", "lastTransitionTime": T2}], suspend=True),
                job_with(RUNNING, suspend=False)):  # fmt: skip
        later = facts(status=recorded, job=job, settings=LIMIT1)
        d = decide_run(later)
        assert d.want_stopped is True and "restarts" not in d.status
        out = run_status(later, d, JobView.from_body(job), halted=False)
        assert out["phase"] == "Failed" and out["conditions"] == recorded["conditions"]  # nothing moves: no write


def test_a_stop_over_the_limit_goes_through_when_the_spec_no_longer_parses() -> None:
    spec = copy.deepcopy(facts().spec)
    spec["training"]["totalTokens"] = "many"
    status = {"phase": "Restarting", "restarts": {"count": 1, "lastRestartTime": T1, "sinceCheckpointStep": 0}}
    d = decide_run(facts(spec=spec, status=status, job=job_with(restarting(T2)), settings=LIMIT1))
    assert not d.accepted and d.want_stopped is True and d.restart_limit


def test_a_permanent_failure_of_the_job_is_mirrored_and_not_counted() -> None:
    conds = restarting(T1) + [{"type": "Failed", "status": "True", "lastTransitionTime": T2, "reason": "PyTorchJobFailed",
                               "message": "job docs-cpt is failing because Master replica(s) failed."}]  # fmt: skip
    status = {"phase": "Running", "restarts": {"count": 1, "lastRestartTime": T0, "sinceCheckpointStep": 0}}
    f = facts(status=status, job=job_with(conds), settings=LIMIT1)
    d = decide_run(f)
    assert d.restart_limit is None and "restarts" not in d.status
    out = run_status(f, d, JobView.from_body(f.job), halted=False)  # type: ignore[arg-type]
    assert out["phase"] == "Failed" and c.find_condition(out["conditions"], c.FAILED)["reason"] == c.JOB_FAILED  # type: ignore[index]
