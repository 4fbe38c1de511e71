"""decide/run.py directly: a run, its dependencies and its job in; the objects, the job writes
and the status out. No API server, no Kopf: every rule of the reconcile is a pure fact here."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cpt_operator import conditions as c
from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.decide.run import RunFacts, decide_checkpoint_deletion, decide_run, run_status
from cpt_operator.decide.run_phase import JobView
from cpt_operator.labels import ANNOTATION_CHECKPOINT_URI
from cpt_operator.render.configmap import TRAINER_CONFIG_KEY
from cpt_operator.settings import NodePool, OperatorSettings
from manifests import example

NS, NAME, UID = "team-a", "docs-cpt", "4f1c2d9e-uid"
SETTINGS = OperatorSettings(node_pools=[NodePool(name="h100", allowed_namespaces=["*"])], allowed_trainer_images=["registry.example/cpt/*:*"])
NOW = "2026-12-02T00:00:00Z"


def objects() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    objs = example("minimal", NS)
    run = objs["CPTRun/docs-cpt"]
    run["spec"]["resources"]["nodePool"] = "h100"
    corpus = objs["Corpus/docs"]
    corpus["status"] = {"phase": "Ready", "outputUri": "/mnt/cpt/pvc/team-data/curated/docs"}
    return run["spec"], corpus, objs["CheckpointPolicy/default"]


def facts(spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None, job: dict[str, Any] | None = None,
          policy: dict[str, Any] | None = None, settings: OperatorSettings = SETTINGS) -> RunFacts:  # fmt: skip
    base_spec, corpus, base_policy = objects()
    return RunFacts(NS, NAME, UID, 1, spec or base_spec, status or {}, job, {"docs": corpus},
                    policy or base_policy, settings, NOW)  # fmt: skip


def created_job(**changes: Any) -> dict[str, Any]:
    """The job the decision renders for a new run, as the API server would return it."""
    d = decide_run(facts(**changes))
    assert d.job is not None
    job = copy.deepcopy(d.job)
    job["metadata"]["uid"] = "job-uid"
    return job


def trainer_checkpoint_uri(configmap: dict[str, Any]) -> str:
    import json

    return str(json.loads(configmap["data"][TRAINER_CONFIG_KEY])["checkpoint"]["uri"])


def test_a_new_run_gets_its_configmap_and_job_and_records_its_checkpoint_prefix_with_its_uid() -> None:
    d = decide_run(facts())
    assert d.accepted and d.job is not None and d.configmap is not None and d.want_stopped is None
    prefix = f"/mnt/cpt/pvc/team-data/checkpoints/{NS}/{NAME}/{UID}"
    assert d.status["checkpointStorage"] == {"uri": prefix, "deleteWithRun": False}
    assert trainer_checkpoint_uri(d.configmap) == prefix
    assert d.job["metadata"]["annotations"][ANNOTATION_CHECKPOINT_URI] == prefix
    assert d.job["metadata"]["ownerReferences"][0]["uid"] == UID
    status = run_status(facts(), d, JobView.from_body(d.job), halted=False)
    assert status["phase"] == "Starting" and status["pytorchJobName"] == d.job["metadata"]["name"]


def test_a_stop_goes_through_when_the_platform_no_longer_allows_the_image() -> None:
    spec, _, _ = objects()
    spec["trainer"] = {"image": "registry.example/cpt/trainer:1"}
    job = created_job(spec=copy.deepcopy(spec))
    spec["suspend"] = True
    narrowed = SETTINGS.model_copy(update={"allowed_trainer_images": ["registry.example/other/*:*"]})
    d = decide_run(facts(spec=spec, job=job, settings=narrowed))
    assert not d.accepted and d.want_stopped is True
    assert (c.ACCEPTED, False, c.IMAGE_NOT_ALLOWED) == d.updates[0][:3]


def test_a_refused_run_is_never_started_again() -> None:
    spec, _, _ = objects()
    spec["trainer"] = {"image": "registry.example/cpt/trainer:1"}
    job = created_job(spec=copy.deepcopy(spec))
    job["spec"]["runPolicy"]["suspend"] = True  # the tenant had suspended it
    narrowed = SETTINGS.model_copy(update={"allowed_trainer_images": []})
    d = decide_run(facts(spec=spec, job=job, settings=narrowed))  # spec.suspend now false
    assert d.want_stopped is None  # left as it is: never un-suspended while refused


def test_a_stop_goes_through_when_the_spec_no_longer_parses() -> None:
    spec, _, _ = objects()
    job = created_job(spec=copy.deepcopy(spec))
    spec["suspend"] = True
    spec["fieldFromANewerCRD"] = {"defaulted": True}  # a CRD upgrade defaulted a field this operator does not know
    d = decide_run(facts(spec=spec, job=job))
    assert d.updates[0][:3] == (c.ACCEPTED, False, c.INVALID_SPEC)
    assert d.want_stopped is True


def test_a_halted_run_is_stopped_even_when_an_immutable_field_changed() -> None:
    spec, _, _ = objects()
    job = created_job(spec=copy.deepcopy(spec))
    spec["training"]["seed"] = spec["training"].get("seed", 0) + 1
    d = decide_run(facts(spec=spec, job=job, status={"phase": "Halted"}))
    assert d.updates[0][:3] == (c.ACCEPTED, False, c.IMMUTABLE_FIELD_CHANGED)
    assert d.want_stopped is True
    assert run_status(facts(status={"phase": "Halted"}), d, JobView.from_body(job), halted=True)["phase"] == "Halted"


def test_a_job_of_the_runs_name_it_does_not_own_is_never_adopted_or_controlled() -> None:
    job = created_job()
    job["metadata"]["ownerReferences"] = []  # the tenant's own PyTorchJob, labelled like ours
    d = decide_run(facts(job=job, spec={**objects()[0], "suspend": True}))
    assert d.job_ignored and d.want_stopped is None and d.job is None
    assert d.updates[0][:3] == (c.ACCEPTED, False, c.OBJECT_NOT_OWNED)
    assert "pytorchJobName" not in run_status(facts(), d, None, halted=False)


def test_the_recorded_prefix_wins_over_a_later_policy_edit() -> None:
    status = {"checkpointStorage": {"uri": "/mnt/cpt/pvc/team-data/checkpoints/team-a/docs-cpt/old", "deleteWithRun": True}}
    _, _, policy = objects()
    policy["spec"]["storage"]["pvc"]["path"] = "elsewhere"
    policy["spec"]["deleteWithRun"] = False
    d = decide_run(facts(status=status, job=created_job(), policy=policy))
    assert d.status["checkpointStorage"] == status["checkpointStorage"]
    assert trainer_checkpoint_uri(d.configmap) == status["checkpointStorage"]["uri"]  # type: ignore[arg-type]


@pytest.mark.parametrize("annotation,expected", [
    ("/mnt/cpt/pvc/team-data/checkpoints/team-a/docs-cpt/from-the-job", "/mnt/cpt/pvc/team-data/checkpoints/team-a/docs-cpt/from-the-job"),
    (None, "/mnt/cpt/pvc/team-data/checkpoints/team-a/docs-cpt"),  # a job from before the record: its uid-less prefix
])  # fmt: skip
def test_a_job_without_a_status_record_keeps_the_prefix_it_was_given(annotation: str | None, expected: str) -> None:
    job = created_job()
    annotations = job["metadata"]["annotations"]
    annotations.pop(ANNOTATION_CHECKPOINT_URI)
    if annotation:
        annotations[ANNOTATION_CHECKPOINT_URI] = annotation
    d = decide_run(facts(job=job))
    assert d.status["checkpointStorage"]["uri"] == expected
    assert trainer_checkpoint_uri(d.configmap) == expected  # type: ignore[arg-type]


def test_a_finished_run_whose_job_is_gone_never_trains_again() -> None:
    d = decide_run(facts(status={"phase": "Succeeded"}))
    assert d.job is None and d.configmap is None and d.phase == "Succeeded"


def test_missing_dependencies_create_nothing_and_leave_a_running_job_running() -> None:
    base_spec, corpus, policy = objects()
    corpus["status"] = {"phase": "Curating"}
    f = RunFacts(NS, NAME, UID, 1, base_spec, {}, None, {"docs": corpus}, policy, SETTINGS, NOW)
    d = decide_run(f)
    assert d.job is None and d.configmap is None and d.phase == "WaitingForCorpus"
    job = created_job()
    f = RunFacts(NS, NAME, UID, 1, base_spec, {"phase": "Running"}, job, {"docs": corpus}, policy, SETTINGS, NOW)
    assert decide_run(f).want_stopped is None


def policy_spec(**changes: Any) -> CheckpointPolicySpec:
    _, _, policy = objects()
    return CheckpointPolicySpec.model_validate({**policy["spec"], **changes})


RECORDED = {"checkpointStorage": {"uri": f"/mnt/cpt/pvc/team-data/checkpoints/{NS}/{NAME}/{UID}", "deleteWithRun": True}}


@pytest.mark.parametrize("status,policy,deletes", [
    (RECORDED, policy_spec(deleteWithRun=True), True),
    (RECORDED, policy_spec(deleteWithRun=False), False),  # switched off just before the delete
    ({"checkpointStorage": {**RECORDED["checkpointStorage"], "deleteWithRun": False}}, policy_spec(deleteWithRun=True), False),
    (RECORDED, policy_spec(deleteWithRun=True, storage={"pvc": {"claimName": "other", "path": "checkpoints"}}), False),
    (RECORDED, None, False),  # the policy is gone: nothing can be located
    ({"deleteCheckpointsWithRun": True}, policy_spec(deleteWithRun=True), True),  # a run from before the record
])  # fmt: skip
def test_checkpoints_go_with_the_run_only_as_recorded_and_still_promised(status: dict[str, Any],
                                                                         policy: CheckpointPolicySpec | None, deletes: bool) -> None:  # fmt: skip
    plan = decide_checkpoint_deletion(status, policy, "default", NS, NAME, UID, "/mnt/cpt/pvc")
    assert (plan.prefix is not None) == deletes, plan.reason
    if not deletes:
        assert "kept" in plan.reason


def test_the_status_names_the_engine_the_trainer_will_run_and_why() -> None:
    spec, _, _ = objects()
    unknown = copy.deepcopy(spec)
    unknown["baseModel"].pop("parameters", None)
    unknown["deepspeed"] = {**unknown.get("deepspeed", {}), "mode": "auto"}
    engine = decide_run(facts(spec=unknown)).status["engine"]
    assert engine["kind"] == "auto" and engine["zeroStage"] is None and "decides at start" in engine["reason"]
    big = copy.deepcopy(spec)
    big["baseModel"]["parameters"] = 8_000_000_000
    big["deepspeed"] = {**big.get("deepspeed", {}), "mode": "auto", "zeroStage": 3}
    engine = decide_run(facts(spec=big)).status["engine"]
    assert (engine["kind"], engine["zeroStage"]) == ("deepspeed", 3) and "more than half of one 80 GiB GPU" in engine["reason"]
    small = copy.deepcopy(spec)
    small["baseModel"]["parameters"] = 125_000_000
    small["deepspeed"] = {**small.get("deepspeed", {}), "mode": "auto"}
    engine = decide_run(facts(spec=small)).status["engine"]
    assert (engine["kind"], engine["zeroStage"]) == ("torch", 0)


def test_a_recorded_rollback_stops_the_job_with_the_new_config_then_starts_it_once_suspended() -> None:
    job = created_job()
    status = {"phase": "Running", "rollbacks": [{"attempt": 1, "fromStep": 500, "outcome": "Restarting"}]}
    d = decide_run(facts(status=status, job=job))
    assert d.patch_config and d.want_stopped is True and "rollbacks" not in d.status
    job2 = copy.deepcopy(job)
    cm_patch, job_patch = d.config_patches()
    job2["metadata"]["annotations"].update(job_patch["metadata"]["annotations"])
    job2["spec"]["runPolicy"]["suspend"] = True
    d = decide_run(facts(status=status, job=job2))
    assert not d.patch_config and d.want_stopped is True  # suspended, but its pods may still run
    job2["status"] = {"conditions": [{"type": "Suspended", "status": "True"}]}
    d = decide_run(facts(status=status, job=job2))
    assert d.want_stopped is False and d.status["rollbacks"][0]["outcome"] == "Resumed"
