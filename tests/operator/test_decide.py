import pytest

from cpt_operator import conditions as c
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.decide.checks import check_image, check_pool
from cpt_operator.decide.corpus_phase import corpus_job_state, parse_curation_report
from cpt_operator.decide.dependencies import backoff_delay, decide_dependencies
from cpt_operator.decide.immutable import changed_immutable_fields, immutable_digest
from cpt_operator.decide.run_phase import JobView, job_state
from cpt_operator.decide.suspend import JobControl, initial_suspend, job_control, kueue_managed
from cpt_operator.settings import NodePool, OperatorSettings

SPEC = {
    "baseModel": {"location": {"s3": {"uri": "s3://bucket/model"}}},
    "corpora": [{"name": "docs", "role": "domain"}],
    "mixing": {"alpha": 1.0},
    "training": {"totalTokens": 1000},
    "resources": {"nodePool": "h100", "nodes": 2, "gpusPerNode": 8},
    "checkpointPolicyRef": {"name": "p"},
}


def spec(**resources):
    return CPTRunSpec.model_validate({**SPEC, "resources": {**SPEC["resources"], **resources}})


SETTINGS = OperatorSettings(
    node_pools=[NodePool(name="h100", allowed_namespaces=["*"]), NodePool(name="vip", allowed_namespaces=["vip-*"]),
                NodePool(name="small", gpus_per_node=4, allowed_namespaces=["*"])],
    allowed_trainer_images=["registry.example/cpt/*:*"],
)


def job(*conds, suspend=False):
    return JobView("j", suspend, tuple({"type": t, "status": s, "lastTransitionTime": f"2024-01-01T00:00:0{i}Z"}
                                       for i, (t, s) in enumerate(conds)), None, None)  # fmt: skip


@pytest.mark.parametrize("conds,phase", [
    ((), "Starting"),
    ((("Created", "True"),), "Starting"),
    ((("Created", "True"), ("Running", "True")), "Running"),
    ((("Created", "True"), ("Running", "False"), ("Restarting", "True")), "Restarting"),
    ((("Created", "True"), ("Restarting", "True"), ("Running", "True")), "Running"),
    ((("Running", "True"), ("Succeeded", "True")), "Succeeded"),
    ((("Running", "True"), ("Failed", "True")), "Failed"),
])  # fmt: skip
def test_phase_from_pytorchjob_conditions(conds, phase):
    assert job_state(job(*conds), False, False).phase == phase


def test_suspended_job_phase_depends_on_who_suspended():
    suspended = job(("Created", "True"), ("Suspended", "True"), suspend=True)
    assert job_state(suspended, True, False).phase == "Suspended"
    assert job_state(suspended, True, False).suspended[1] == c.SUSPENDED_BY_TENANT
    queued = job_state(suspended, False, True)
    assert queued.phase == "Pending" and queued.suspended[1] == c.WAITING_FOR_ADMISSION


def test_terminal_wins_over_suspend():
    assert job_state(job(("Succeeded", "True"), suspend=True), True, False).phase == "Succeeded"


@pytest.mark.parametrize("stop,job_suspend,expected", [
    (False, True, JobControl(suspend=False)),   # resume without Kueue: the operator un-suspends
    (False, False, JobControl()),
    (True, False, JobControl(suspend=True)),
    (True, True, JobControl()),
])  # fmt: skip
def test_without_kueue_the_operator_owns_suspend(stop, job_suspend, expected):
    assert job_control(stop, False, job_suspend, None, False) == expected


@pytest.mark.parametrize("stop,job_suspend,active,ours,expected", [
    # Kueue un-suspends an admitted job whatever else suspends it: the stop is the Workload's.
    (True, False, True, False, JobControl(workload_active=False)),
    (True, True, False, True, JobControl()),                  # stopped already: nothing to write
    (False, True, False, True, JobControl(workload_active=True)),  # resume: back to the queue
    (False, True, False, False, JobControl()),                # Kueue deactivated it itself: leave it
    (False, True, True, False, JobControl()),                 # waiting for admission: never suspend=False
    (False, False, True, False, JobControl()),                # admitted and running
    (True, False, None, False, JobControl(suspend=True)),     # no Workload yet, running: suspend (as Kueue would)
    (True, True, None, False, JobControl()),
    (False, True, None, False, JobControl()),                 # no Workload yet: Kueue admits, not us
])  # fmt: skip
def test_under_kueue_a_stop_deactivates_the_workload(stop, job_suspend, active, ours, expected):
    decision = job_control(stop, True, job_suspend, active, ours)
    assert decision == expected
    assert decision.suspend is not False  # the operator never un-suspends a job Kueue admits


def test_kueue_manages_a_job_by_its_own_label_or_the_platform_setting():
    assert kueue_managed("team-q", False) and kueue_managed("default", False)  # e.g. set by Kueue's webhook
    assert not kueue_managed(None, False)
    assert kueue_managed(None, True)  # manageJobsWithoutQueueName


def test_initial_suspend():
    assert initial_suspend(False, None) is False
    assert initial_suspend(False, "q") is True
    assert initial_suspend(True, None) is True
    assert initial_suspend(False, None, halted=True) is True


def test_pool_checks():
    assert check_pool(spec(), "team", SETTINGS)[1] is None
    assert check_pool(spec(nodePool="nope"), "team", SETTINGS)[1].reason == c.UNKNOWN_NODE_POOL
    assert check_pool(spec(nodePool="vip"), "team", SETTINGS)[1].reason == c.NODE_POOL_NOT_ALLOWED
    assert check_pool(spec(nodePool="vip"), "vip-team", SETTINGS)[1] is None
    assert check_pool(spec(nodePool="small"), "team", SETTINGS)[1].reason == c.GPUS_EXCEED_POOL
    assert "nope" in check_pool(spec(nodePool="nope"), "team", SETTINGS)[1].message


def test_image_allow_list():
    s = CPTRunSpec.model_validate({**SPEC, "trainer": {"image": "registry.example/cpt/trainer:2"}})
    assert check_image(s, SETTINGS) is None
    s = CPTRunSpec.model_validate({**SPEC, "trainer": {"image": "docker.io/evil:1"}})
    assert check_image(s, SETTINGS).reason == c.IMAGE_NOT_ALLOWED
    assert check_image(spec(), SETTINGS) is None


def test_dependencies():
    ready = {"status": {"phase": "Ready"}}
    policy = {"spec": {}}
    assert decide_dependencies("ns", ["a"], {"a": ready}, "p", policy).ready
    d = decide_dependencies("ns", ["a", "b"], {"a": ready, "b": None}, "p", policy)
    assert d.reason == c.CORPUS_NOT_FOUND and "b" in d.message and "a" not in d.waiting_for
    d = decide_dependencies("ns", ["a"], {"a": {"status": {"phase": "Curating"}}}, "p", policy)
    assert (d.reason, d.phase) == (c.WAITING_FOR_CORPUS, "WaitingForCorpus") and "a" in d.message
    assert decide_dependencies("ns", ["a"], {"a": {"status": {"phase": "Failed"}}}, "p", policy).reason == c.CORPUS_FAILED
    assert decide_dependencies("ns", ["a"], {"a": ready}, "p", None).reason == c.CHECKPOINT_POLICY_NOT_FOUND


def test_backoff_is_bounded():
    delays = [backoff_delay(i, 5, 300) for i in range(50)]
    assert delays[0] == 5 and delays == sorted(delays) and max(delays) == 300


def test_immutable_fields_detected_and_named():
    before = spec().to_wire()
    stored = immutable_digest(before)
    assert changed_immutable_fields(stored, before) == []
    after = spec(nodes=4).to_wire()
    assert changed_immutable_fields(stored, after) == ["resources.nodes"]
    lr = CPTRunSpec.model_validate({**SPEC, "training": {"totalTokens": 1000, "learningRate": 1e-5}}).to_wire()
    assert changed_immutable_fields(stored, lr) == []
    assert changed_immutable_fields(None, after) == []
    assert len(stored) < 512  # a small annotation whatever the spec size


def test_corpus_phase_from_job():
    assert corpus_job_state({}, 4).phase == "Curating"
    assert corpus_job_state({"succeeded": 4}, 4).phase == "Ready"
    assert corpus_job_state({"conditions": [{"type": "Complete", "status": "True"}]}, 4).phase == "Ready"
    failed = corpus_job_state({"conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}]}, 4)
    assert failed.phase == "Failed" and "Backoff" in failed.message


def test_curation_report_parsing_tolerant():
    out = parse_curation_report('{"documents": 5, "outputUri": "s3://b/x", "stages": [{"name": "pii", "input": 5, "modified": 2}],'
                                ' "tokenizer": {"charsPerToken": 3.5}, "bogus": 1}')  # fmt: skip
    assert out == {"documents": 5, "outputUri": "s3://b/x", "stages": [{"name": "pii", "input": 5, "removed": 0, "modified": 2}],
                   "tokenizer": {"charsPerToken": 3.5}}  # fmt: skip
    assert parse_curation_report("not json") == {}
    assert parse_curation_report("[1]") == {}
    assert parse_curation_report(None) == {}
    assert parse_curation_report('{"documents": -1}') == {}
