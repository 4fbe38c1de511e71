"""Renderers: golden files of the examples, Kubeflow v1 field names, pod security, secrets.

Regenerate the golden files with:  CPT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/operator/test_render.py
(then review the diff by hand: they are what `cpt plan` prints and what the operator creates).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from cpt_operator.api.resources import load_manifests
from cpt_operator.render import PlanError, render_all
from cpt_operator.settings import NodePool, OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = ["legal-cpt", "minimal"]

# kubeflow.org/v1 PyTorchJob (training-operator pkg/apis/kubeflow.org/v1: PyTorchJobSpec,
# RunPolicy, ReplicaSpec), checked by hand against the API reference once.
PYTORCHJOB_SPEC_FIELDS = {"runPolicy", "elasticPolicy", "pytorchReplicaSpecs", "nprocPerNode"}
RUN_POLICY_FIELDS = {"cleanPodPolicy", "ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "schedulingPolicy",
                     "suspend", "managedBy"}  # fmt: skip
REPLICA_SPEC_FIELDS = {"replicas", "template", "restartPolicy"}
REPLICA_TYPES = {"Master", "Worker"}
CLEAN_POD_POLICIES = {"All", "Running", "None"}
RESTART_POLICIES = {"Always", "OnFailure", "Never", "ExitCode"}


class _GoldenDumper(yaml.SafeDumper):
    """Readable golden files: multi-line strings (the configs) as literal blocks, no aliases."""

    def ignore_aliases(self, data: object) -> bool:
        return True


_GoldenDumper.add_representer(
    str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)
)


def settings() -> OperatorSettings:
    return OperatorSettings()


def rendered(example: str) -> list[dict]:
    return render_all(load_manifests([ROOT / "examples" / example]), settings())


@pytest.mark.parametrize("example", EXAMPLES)
def test_golden(example: str) -> None:
    text = yaml.dump_all(rendered(example), Dumper=_GoldenDumper, sort_keys=False, width=120)
    path = GOLDEN / f"{example}.yaml"
    if os.environ.get("CPT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with CPT_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs; regenerate with CPT_UPDATE_GOLDEN=1 and review the diff"


def _by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


@pytest.mark.parametrize("example", EXAMPLES)
def test_pytorchjob_uses_kubeflow_v1_fields(example: str) -> None:
    for pj in _by_kind(rendered(example), "PyTorchJob"):
        assert pj["apiVersion"] == "kubeflow.org/v1"
        assert set(pj["spec"]) <= PYTORCHJOB_SPEC_FIELDS
        assert isinstance(pj["spec"]["nprocPerNode"], str)
        assert set(pj["spec"]["runPolicy"]) <= RUN_POLICY_FIELDS
        assert pj["spec"]["runPolicy"]["cleanPodPolicy"] in CLEAN_POD_POLICIES
        assert set(pj["spec"]["pytorchReplicaSpecs"]) <= REPLICA_TYPES
        for replica in pj["spec"]["pytorchReplicaSpecs"].values():
            assert set(replica) <= REPLICA_SPEC_FIELDS and replica["restartPolicy"] in RESTART_POLICIES
            assert replica["template"]["spec"]["containers"][0]["name"] == "pytorch"


def test_legal_pytorchjob_shape() -> None:
    objs = rendered("legal-cpt")
    pj = _by_kind(objs, "PyTorchJob")[0]
    replicas = pj["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 1  # 2 nodes
    assert pj["spec"]["nprocPerNode"] == "8"
    assert pj["spec"]["runPolicy"] == {"backoffLimit": 3, "cleanPodPolicy": "Running", "suspend": True}
    assert pj["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "legal-team-queue"
    pod = replicas["Worker"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "8" and c["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert "priorityClassName" not in pod  # the example sets none: a default install allows none
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"name": "metrics", "containerPort": 9400, "protocol": "TCP"} in c["ports"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                                    "capabilities": {"drop": ["ALL"]}}  # fmt: skip
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/tmp"] == "tmp" and mounts["/etc/cpt"] == "config" and "/dev/shm" in mounts
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "legal-team-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]


def test_minimal_single_node_mounts_pvc_and_has_no_worker() -> None:
    objs = rendered("minimal")
    pj = _by_kind(objs, "PyTorchJob")[0]
    assert set(pj["spec"]["pytorchReplicaSpecs"]) == {"Master"}
    assert pj["spec"]["runPolicy"]["suspend"] is False
    c = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert {"name": "pvc-0", "mountPath": "/mnt/cpt/pvc/team-data"} in c["volumeMounts"]
    assert not [e for e in c["env"] if e["name"].startswith("AWS_")]
    cm = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "docs-cpt-trainer-config")
    config = json.loads(cm["data"]["trainer.json"])
    assert config["checkpoint"]["uri"].startswith("/mnt/cpt/pvc/team-data/checkpoints/")


def test_curation_job_is_indexed_with_parallelism() -> None:
    objs = rendered("legal-cpt")
    jobs = {j["metadata"]["name"]: j for j in _by_kind(objs, "Job")}
    job = jobs["legal-contracts-curate"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 8
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["serviceAccountName"] == "default" and pod["restartPolicy"] == "Never"
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "32Gi"}
    assert c["terminationMessagePolicy"] == "File" and c["terminationMessagePath"] == "/dev/termination-log"
    assert c["command"][:2] == ["cpt-trainer", "curate"]


def test_no_secret_material_in_configmaps() -> None:
    for example in EXAMPLES:
        for cm in [o for o in rendered(example) if o["kind"] == "ConfigMap"]:
            text = json.dumps(cm)
            assert "secretAccessKey" not in text and "AWS_SECRET_ACCESS_KEY" not in text


def test_plan_errors_name_the_problem() -> None:
    resources = load_manifests([ROOT / "examples" / "legal-cpt"])
    without_policy = [r for r in resources if r.kind != "CheckpointPolicy"]
    with pytest.raises(PlanError, match="legal-keep-best"):
        render_all(without_policy, settings())
    with pytest.raises(PlanError, match="node pool"):
        render_all(resources, OperatorSettings(node_pools=[NodePool(name="other")]))


def test_a_priority_class_renders_only_where_the_pool_allows_it() -> None:
    resources = load_manifests([ROOT / "examples" / "legal-cpt"])
    run = next(r for r in resources if r.kind == "CPTRun")
    run.spec.resources.priority_class_name = "training-high"  # type: ignore[union-attr]
    with pytest.raises(PlanError, match="priorityClassName"):
        render_all(resources, settings())
    allowing = settings()
    for pool in allowing.node_pools:
        pool.allowed_priority_classes = ["training-high"]
    pj = _by_kind(render_all(resources, allowing), "PyTorchJob")[0]
    assert pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["priorityClassName"] == "training-high"


@pytest.mark.parametrize("example", EXAMPLES)
def test_trainer_runs_under_cpt_trainer_launch_with_exit_code_restarts(example: str) -> None:
    """`cpt-trainer launch` (not torchrun, which exits 1 for every failure) so ExitCode retries
    signals and preemption (>= 128) and fails config errors (2) at once; the grace period covers the save."""
    for pj in _by_kind(rendered(example), "PyTorchJob"):
        for replica in pj["spec"]["pytorchReplicaSpecs"].values():
            assert replica["restartPolicy"] == "ExitCode"
            pod = replica["template"]["spec"]
            command = pod["containers"][0]["command"]
            assert command[:2] == ["cpt-trainer", "launch"] and "torchrun" not in command
            cut = command.index("--")
            assert command[cut + 1:] == ["train", "--config", "/etc/cpt/trainer.json"]
            options = command[2:cut]
            shutdown = int(options[options.index("--shutdown-timeout") + 1])
            assert 30 < shutdown < pod["terminationGracePeriodSeconds"]


def test_a_runs_own_grace_period_sets_the_pods_and_the_save_share_within_the_platform_limit() -> None:
    from cpt_operator.decide.checks import check_grace_period

    resources = load_manifests([ROOT / "examples" / "minimal"])
    run = next(r for r in resources if r.kind == "CPTRun")
    run.spec.trainer.termination_grace_period_seconds = 900
    settings_ = settings()
    (pj,) = _by_kind(render_all(resources, settings_), "PyTorchJob")
    pod = pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert pod["terminationGracePeriodSeconds"] == 900
    assert int(command[command.index("--shutdown-timeout") + 1]) == int(900 * settings_.checkpoint_save_share) == 720
    assert check_grace_period(run.spec, settings_) is None
    run.spec.trainer.termination_grace_period_seconds = settings_.max_termination_grace_period_seconds + 1
    refusal = check_grace_period(run.spec, settings_)
    assert refusal is not None and refusal.reason == "GracePeriodExceedsLimit" and "limit of 3600 s" in refusal.message
    run.spec.trainer.termination_grace_period_seconds = None  # the operator's default
    (pj,) = _by_kind(render_all(resources, settings_), "PyTorchJob")
    assert pj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["terminationGracePeriodSeconds"] == 360


def test_launch_options_take_the_training_operator_env_like_torchrun(monkeypatch) -> None:
    """The PET_* variables the training operator sets on a Worker pod reach torch's launcher config."""
    pytest.importorskip("torch")
    from cpt_trainer.train.launcher import _torchrun_args, split_argv

    pj = _by_kind(rendered("legal-cpt"), "PyTorchJob")[0]
    command = pj["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["command"]
    env = {"MASTER_ADDR": "legal-cpt-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "16", "RANK": "1",
           "PET_MASTER_ADDR": "legal-cpt-master-0", "PET_MASTER_PORT": "23456", "PET_NNODES": "2",
           "PET_NODE_RANK": "1", "PET_NPROC_PER_NODE": pj["spec"]["nprocPerNode"]}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # else torch's config_from_args sets it in this process
    options, rest = split_argv(command[2:])
    torchrun, args = _torchrun_args(options, rest)
    config, cmd, cmd_args = torchrun.config_from_args(args)
    assert (config.min_nodes, config.max_nodes, config.nproc_per_node) == (2, 2, 8)
    assert config.rdzv_backend == "static" and config.rdzv_endpoint == "legal-cpt-master-0:23456"
    assert config.rdzv_configs["rank"] == 1 and config.max_restarts == 0
    assert config.shutdown_timeout == int(options[options.index("--shutdown-timeout") + 1])
    assert list(cmd_args)[-3:] == ["train", "--config", "/etc/cpt/trainer.json"]
