"""Render a CPTRun into its trainer ConfigMap and kubeflow.org/v1 PyTorchJob (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.common import API_VERSION, Location, StorageLocation, SecretReference
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.decide.immutable import immutable_digest
from cpt_operator.render import names
from cpt_operator.render.configmap import TRAINER_CONFIG_KEY, config_json, digest, render_configmap
from cpt_operator.render.locations import run_prefix
from cpt_operator.render.pod import (
    CONFIG_DIR,
    container_security_context,
    credential_env,
    credentials_secret,
    pod_identity,
    scratch_env,
    volumes_and_mounts,
)
from cpt_operator.render.trainer_config import RETAIN_DIR, render_trainer_config
from cpt_operator.settings import NodePool, OperatorSettings

PYTORCHJOB_API_VERSION = "kubeflow.org/v1"
# The training operator finds the trainer container by this name.
CONTAINER_NAME = "pytorch"
# The training operator recreates a pod whose container exited >= 128 and fails the job at once
# on 1-127. It does not count those recreations against runPolicy.backoffLimit (its check sums
# the restartCount of Running pods, 0 for a recreated pod): the operator caps them itself
# (decide/restarts.py: more than settings.backoff_limit restarts without a new checkpoint fail
# the run and stop the job). `cpt-trainer launch` (the container's command, PID 1)
# exits with its ranks' root cause (docs/trainer.md "Exit codes"): 128+N for a rank killed
# by signal N (137: OOM kill), 143 on preemption (SIGTERM: the ranks save a checkpoint and
# stop, the next attempt resumes) -> retried; 2 invalid config or input, 1 crash or CUDA OOM
# -> permanent, no loop. (torchrun itself would exit 1 for all of these: never retried.)
RESTART_POLICY = "ExitCode"
# After SIGTERM the launcher gives the ranks `settings.checkpoint_save_share` of the pod's grace
# period (the run's spec.trainer.terminationGracePeriodSeconds, else the operator's) to finish
# the step and save, then SIGKILLs them; the rest is margin, so the kubelet never kills a save
# that the launcher still waits for. A save cut short is never taken for a checkpoint (COMPLETE
# is written last).


def grace_and_shutdown(spec: CPTRunSpec, settings: OperatorSettings) -> tuple[int, int]:
    """(terminationGracePeriodSeconds, the launcher's --shutdown-timeout) of a run's pods."""
    grace = spec.trainer.termination_grace_period_seconds or settings.termination_grace_period_seconds
    return grace, max(10, int(grace * settings.checkpoint_save_share))
# When the job ends (failed or succeeded), delete the pods that still run, so no master
# or worker keeps holding GPUs; finished pods stay for `kubectl logs` (they hold no GPUs).
CLEAN_POD_POLICY = "Running"


@dataclass
class RunInputs:
    """Everything a run's objects are rendered from (resolved in the run's own namespace)."""

    namespace: str
    name: str
    uid: str
    spec: CPTRunSpec
    corpora: dict[str, CorpusSpec]
    policy: CheckpointPolicySpec
    corpus_outputs: dict[str, str] = field(default_factory=dict)
    checkpoint_uri: str | None = None  # the run's own checkpoint prefix (decide/run.checkpoint_uri)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)  # status.rollbacks (action Rollback)


def referenced_corpora(spec: CPTRunSpec) -> list[str]:
    """Every Corpus a run needs Ready: its corpora, general-eval corpora, fromCorpus; in order."""
    out: list[str] = []
    for name in [c.name for c in spec.corpora] + [g.corpus for g in spec.evaluation.general_evals if g.corpus]:
        if name not in out:
            out.append(name)
    if spec.tokenizer_extension.from_corpus and spec.tokenizer_extension.from_corpus not in out:
        out.append(spec.tokenizer_extension.from_corpus)
    return out


def run_locations(inputs: RunInputs) -> list[Location | StorageLocation | None]:
    spec = inputs.spec
    return [
        spec.base_model.location,
        spec.base_model.tokenizer,
        *(inputs.corpora[c].output for c in referenced_corpora(spec) if c in inputs.corpora),
        *(g.task_file for g in spec.evaluation.general_evals),
        inputs.policy.storage,
    ]


def run_credentials(inputs: RunInputs) -> SecretReference | None:
    """The tenant Secret the trainer pods read S3 credentials from (ConflictingCredentials if several)."""
    return credentials_secret(*run_locations(inputs))


def trainer_image(spec: CPTRunSpec, settings: OperatorSettings) -> str:
    return spec.trainer.image or settings.trainer_image


def render_trainer_configmap(inputs: RunInputs, settings: OperatorSettings) -> dict[str, Any]:
    config = render_trainer_config(
        inputs.namespace, inputs.name, inputs.spec, inputs.corpora, inputs.policy,
        uid=inputs.uid, pvc_root=settings.pvc_mount_root, corpus_outputs=inputs.corpus_outputs,
        checkpoint_uri=inputs.checkpoint_uri, rollbacks=inputs.rollbacks,
    )  # fmt: skip
    return render_configmap(
        names.trainer_configmap_name(inputs.name),
        inputs.namespace,
        TRAINER_CONFIG_KEY,
        config_json(config),
        names.run_labels(inputs.namespace, inputs.name, "trainer-config"),
        names.owner_reference(API_VERSION, "CPTRun", inputs.name, inputs.uid),
    )


def _tolerations(pool: NodePool, spec: CPTRunSpec) -> list[dict[str, Any]]:
    out = [dict(t) for t in pool.tolerations]
    for t in spec.resources.tolerations:
        wire = t.to_wire()
        if wire not in out:
            out.append(wire)
    return out


def _pod_template(inputs: RunInputs, settings: OperatorSettings, pool: NodePool, config_text: str, role: str) -> dict[str, Any]:
    spec = inputs.spec
    res = spec.resources
    gpus = str(res.gpus_per_node)
    memory = str(res.memory if res.memory is not None else pool.memory)
    cpu = str(res.cpu if res.cpu is not None else pool.cpu)
    retain = (names.retain_configmap_name(inputs.name), RETAIN_DIR) if inputs.policy.storage.pvc is not None else None
    volumes, mounts = volumes_and_mounts(
        names.trainer_configmap_name(inputs.name), run_locations(inputs), settings.pvc_mount_root, shm=True, retain=retain
    )
    port = spec.trainer.metrics_port
    grace, shutdown = grace_and_shutdown(spec, settings)
    labels = names.run_labels(inputs.namespace, inputs.name, "trainer")
    # The run's uid: Prometheus takes the series' run identity from it (the chart's PodMonitor).
    labels[names.LABEL_RUN_UID] = inputs.uid
    labels["cpt.dev/replica-type"] = role.lower()
    pod_spec: dict[str, Any] = {
        **pod_identity(),
        "nodeSelector": dict(pool.node_selector),
        "tolerations": _tolerations(pool, spec),
        "containers": [
            {
                "name": CONTAINER_NAME,
                "image": trainer_image(spec, settings),
                "imagePullPolicy": "IfNotPresent",
                # `cpt-trainer launch` is torchrun in-process (torch's parser and elastic agent):
                # it reads nodes, node rank, master address/port and nprocPerNode from the PET_*
                # variables the training operator sets, starts one trainer process per GPU,
                # and exits with the root cause (see RESTART_POLICY).
                "command": [
                    "cpt-trainer", "launch", "--shutdown-timeout", str(shutdown),
                    "--", "train", "--config", f"{CONFIG_DIR}/{TRAINER_CONFIG_KEY}",
                ],
                "env": [
                    *scratch_env(),
                    {"name": "CPT_RUN_NAMESPACE", "value": inputs.namespace},
                    {"name": "CPT_RUN_NAME", "value": inputs.name},
                    *credential_env(run_credentials(inputs)),
                ],
                "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
                "resources": {
                    "requests": {"cpu": cpu, "memory": memory, pool.gpu_resource: gpus},
                    "limits": {"memory": memory, pool.gpu_resource: gpus},
                },
                "securityContext": container_security_context(),
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "volumeMounts": mounts,
            }
        ],
        "volumes": volumes,
        "terminationGracePeriodSeconds": grace,
    }
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    return {
        "metadata": {
            "labels": labels,
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(port),
                names.ANNOTATION_CONFIG_DIGEST: digest(config_text),
            },
        },
        "spec": pod_spec,
    }


def render_pytorchjob(
    inputs: RunInputs, settings: OperatorSettings, pool: NodePool, suspend: bool, config_text: str
) -> dict[str, Any]:
    """The run's PyTorchJob: one Master and nodes-1 Workers, `nprocPerNode` = GPUs per node.

    `suspend` is the initial runPolicy.suspend (tenant suspend, or a Kueue queue: Kueue
    un-suspends on admission); `config_text` is the trainer config JSON (its digest is
    recorded so a changed config is visible on the job).
    """
    spec = inputs.spec
    labels = names.run_labels(inputs.namespace, inputs.name, "trainer")
    if spec.resources.queue_name:
        labels[names.KUEUE_QUEUE_LABEL] = spec.resources.queue_name
    replicas: dict[str, Any] = {
        "Master": {"replicas": 1, "restartPolicy": RESTART_POLICY, "template": _pod_template(inputs, settings, pool, config_text, "Master")}
    }
    if spec.resources.nodes > 1:
        replicas["Worker"] = {
            "replicas": spec.resources.nodes - 1,
            "restartPolicy": RESTART_POLICY,
            "template": _pod_template(inputs, settings, pool, config_text, "Worker"),
        }
    return {
        "apiVersion": PYTORCHJOB_API_VERSION,
        "kind": "PyTorchJob",
        "metadata": {
            "name": names.pytorchjob_name(inputs.name),
            "namespace": inputs.namespace,
            "labels": labels,
            "annotations": {
                names.ANNOTATION_SPEC_DIGEST: immutable_digest(spec.to_wire()),
                names.ANNOTATION_CONFIG_DIGEST: digest(config_text),
                # Fixed with the job: deletion checks both against the policy, fresh.
                names.ANNOTATION_CHECKPOINT_URI: inputs.checkpoint_uri or run_prefix(
                    inputs.policy.storage, inputs.namespace, inputs.name, settings.pvc_mount_root, inputs.uid),
                names.ANNOTATION_DELETE_WITH_RUN: "true" if inputs.policy.delete_with_run else "false",
            },
            "ownerReferences": [names.owner_reference(API_VERSION, "CPTRun", inputs.name, inputs.uid)],
        },
        "spec": {
            "nprocPerNode": str(spec.resources.gpus_per_node),
            "runPolicy": {
                "backoffLimit": settings.backoff_limit,
                "cleanPodPolicy": CLEAN_POD_POLICY,
                "suspend": suspend,
            },
            "pytorchReplicaSpecs": replicas,
        },
    }
