"""Operator settings: one typed object, read from a YAML file (the Helm chart mounts it)
and overridden by `CPT_OPERATOR_*` environment variables.

    CPT_OPERATOR_SETTINGS_FILE=/etc/cpt-operator/settings.yaml   # the file (optional)
    CPT_OPERATOR_PROMETHEUS_URL=http://prometheus:9090          # any field, upper-cased

Node pools are the platform team's: a CPTRun names one, and gets its node selector,
tolerations and GPU resource; an unknown pool, or one its namespace may not use, is a
condition on the run, not a pending pod.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "CPT_OPERATOR_"
SETTINGS_FILE_ENV = ENV_PREFIX + "SETTINGS_FILE"


class NodePool(BaseModel):
    """A GPU node pool tenants may train on."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(description="Name a CPTRun's spec.resources.nodePool refers to.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of the pool's nodes.")
    tolerations: list[dict[str, Any]] = Field(default_factory=list, description="Tolerations for the pool's taints.")
    gpu_resource: str = Field("nvidia.com/gpu", description="Extended resource name of the GPUs.")
    gpus_per_node: int = Field(8, ge=1, le=16, description="GPUs on each node.")
    gpu_memory_gib: float = Field(80.0, gt=0, description="Memory of one GPU, GiB (the memory-fit check).")
    gpu_peak_tflops: float = Field(989.5, gt=0, description="Dense bf16 peak of one GPU, TFLOP/s (MFU).")
    cpu: str = Field("32", description="Default CPU request per training pod.")
    memory: str = Field("256Gi", description="Default memory request per training pod.")
    allowed_namespaces: list[str] = Field(
        default_factory=list, description="Namespaces (glob patterns) whose runs may use the pool; empty: none."
    )
    allowed_priority_classes: list[str] = Field(
        default_factory=list, description="PriorityClass names a run on the pool may set; empty: none."
    )
    allowed_toleration_keys: list[str] = Field(
        default_factory=list, description="Taint keys a run may add tolerations for, beyond the pool's own; empty: none."
    )

    def allows(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.allowed_namespaces)


def _default_pools() -> list[NodePool]:
    """Without any pool in the settings (`cpt plan` on a laptop, local mode): one example pool
    open to every namespace. A deployed operator gets its pools from the chart, where a pool
    allows no namespace until the platform names them."""
    return [NodePool(name="h100-80gb", node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, allowed_namespaces=["*"])]


def _default_curation() -> "CurationSettings":
    """Without a curation block in the settings (`cpt plan`, local mode): curation in every
    namespace. The chart always writes the block, where it allows no namespace by default."""
    return CurationSettings(allowed_namespaces=["*"])


class KueueSettings(BaseModel):
    """How the cluster's Kueue manages jobs (docs/kueue.md)."""

    model_config = ConfigDict(extra="forbid")

    manage_jobs_without_queue_name: bool = Field(
        False, description="Kueue runs with manageJobsWithoutQueueName: it admits every job, labelled or not.",
    )  # fmt: skip
    workload_api_version: Literal["auto", "v1beta1", "v1beta2"] = Field(
        "auto", description="API version of kueue.x-k8s.io Workloads the operator reads and deactivates; "
        "auto: the version the API server prefers (Kueue's storage version).",
    )  # fmt: skip


class CurationSettings(BaseModel):
    """What a Corpus's curation Job may request (it runs in the tenant's namespace like a run)."""

    model_config = ConfigDict(extra="forbid")

    allowed_namespaces: list[str] = Field(
        default_factory=list, description="Namespaces (glob patterns) whose Corpora may curate; empty: none."
    )
    max_parallelism: int = Field(16, ge=1, le=256, description="Most curation pods of one Corpus.")
    max_gpus_per_pod: int = Field(0, ge=0, le=8, description="Most GPUs per curation pod; 0: CPU-only curation.")
    gpu_node_pool: str | None = Field(
        None, description="Node pool of GPU curation pods (its selector, tolerations, GPU resource and namespaces); "
        "None: no GPU curation.",
    )  # fmt: skip
    queue_name: str | None = Field(None, description="Kueue LocalQueue label of curation Jobs (in each namespace).")

    def allows(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.allowed_namespaces)


def image_pattern_matches(image: str, pattern: str) -> bool:
    """Image glob: `*` is any run of characters but `/`, `:` and `@` (one path component, tag or
    digest part), `?` one such character; everything else is literal. `reg/cpt/*` does not
    admit `reg/cpt/x/y` nor `reg/cpt/x:tag`; write `reg/cpt/trainer:*` for any tag."""
    parts = ["[^/:@]*" if ch == "*" else "[^/:@]" if ch == "?" else re.escape(ch) for ch in pattern]
    return re.fullmatch("".join(parts), image) is not None


class StorageGrant(BaseModel):
    """An S3 prefix the operator may reach with its own cloud identity (IRSA, workload identity)
    for the CheckpointPolicies of some namespaces that name no credentialsSecret."""

    model_config = ConfigDict(extra="forbid")

    namespaces: list[str] = Field(description="Namespaces (glob patterns) the grant is for.")
    uri: str = Field(
        pattern=r"^s3://[a-z0-9.-]+(/.*)?$",
        description="s3://bucket/prefix a policy's storage.s3.uri must equal; `{namespace}` stands for the run's "
        "namespace, and only with it may a policy's uri lie below the grant's.",
    )  # fmt: skip
    endpoint: str | None = Field(None, description="The endpoint the grant is for (one of allowedS3Endpoints); None: AWS.")

    def allows(self, namespace: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, pattern) for pattern in self.namespaces)


class OperatorSettings(BaseSettings):
    """Everything the platform team configures."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", env_nested_delimiter="__")

    trainer_image: str = Field("ghcr.io/cpt-operator/trainer:0.1.0", description="Default trainer image.")
    allowed_trainer_images: list[str] = Field(
        default_factory=list, description="Images (glob patterns) a CPTRun's spec.trainer.image may name; empty: none."
    )
    node_pools: list[NodePool] = Field(default_factory=_default_pools, description="GPU node pools.")
    prometheus_url: str | None = Field(None, description="Prometheus HTTP API; None: scrape trainer pods directly.")
    prometheus_bearer_token_file: str | None = Field(None, description="File with a bearer token for Prometheus.")
    prometheus_ca_file: str | None = Field(None, description="CA bundle for a TLS Prometheus.")
    control_interval_seconds: float = Field(30.0, gt=0, description="Period of the metrics control loop per run.")
    metrics_stale_seconds: float = Field(300.0, gt=0, description="Metrics older than this count as unavailable.")
    achieved_tflops_per_gpu: float = Field(400.0, gt=0, description="Achieved TFLOP/s per GPU for cost estimates.")
    price_per_gpu_hour: float = Field(2.5, ge=0, description="Price of one GPU-hour for cost estimates.")
    backoff_limit: int = Field(
        3, ge=0,
        description="Restarts a run's PyTorchJob may make without a new checkpoint; one more and the operator stops it "
        "and fails the run (RestartLimitExceeded). Also runPolicy.backoffLimit of the PyTorchJob and backoffLimit of "
        "curation Jobs.",
    )  # fmt: skip
    termination_grace_period_seconds: int = Field(
        360, ge=30, le=86400, description="Trainer pods' terminationGracePeriodSeconds unless a run sets its own."
    )
    max_termination_grace_period_seconds: int = Field(
        3600, ge=30, le=86400, description="The most a run's spec.trainer.terminationGracePeriodSeconds may ask for."
    )
    checkpoint_save_share: float = Field(
        0.8, gt=0.0, lt=1.0,
        description="Share of the grace period the launcher gives the ranks to finish the step and save on SIGTERM "
        "(the rest is margin for the launcher and the kubelet).",
    )  # fmt: skip
    watch_namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty: cluster-wide.")
    pvc_mount_root: str = Field("/mnt/cpt/pvc", description="Where PVCs are mounted in trainer pods.")
    cleanup_image: str = Field(
        "ghcr.io/cpt-operator/operator:0.1.0",
        description="Image of the Job that deletes a run's PVC checkpoints with it (the operator's own image).",
    )
    operator_metrics_port: int = Field(8080, ge=0, le=65535, description="Port of the operator's own /metrics.")
    kueue: KueueSettings = Field(default_factory=KueueSettings, description="How Kueue admits jobs, if it runs.")
    storage_grants: list[StorageGrant] = Field(
        default_factory=list, description="S3 prefixes the operator may use its own identity for, per namespace; "
        "empty: a CheckpointPolicy without credentialsSecret is never listed or deleted by the operator.",
    )  # fmt: skip
    allowed_s3_endpoints: list[str] = Field(
        default_factory=list, description="S3 endpoint URLs a Corpus or CheckpointPolicy may name (exact, without a "
        "trailing slash); empty: only AWS's default endpoint.",
    )  # fmt: skip
    control_run_deadline_seconds: float = Field(
        60.0, gt=0, description="Longest one run's control pass may take; a run past it is reported and skipped."
    )
    control_concurrency: int = Field(4, ge=1, le=64, description="Runs whose control passes run at the same time.")
    curation: CurationSettings = Field(default_factory=_default_curation, description="Limits of curation Jobs.")
    allowed_local_roots: list[str] = Field(
        default_factory=list,
        description="Absolute folders (in the trainer and curation images) that `local` locations may name on a "
        "cluster; empty: none (a tenant's `local` path could otherwise read the pod's own /proc or service files).",
    )

    def pool(self, name: str) -> NodePool | None:
        return next((p for p in self.node_pools if p.name == name), None)

    def image_allowed(self, image: str) -> bool:
        return image == self.trainer_image or any(image_pattern_matches(image, p) for p in self.allowed_trainer_images)


def load_settings(path: str | Path | None = None) -> OperatorSettings:
    """Settings from `path` (or $CPT_OPERATOR_SETTINGS_FILE), environment variables winning."""
    path = path or os.environ.get(SETTINGS_FILE_ENV)
    data: dict[str, Any] = {}
    if path:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: operator settings must be a mapping")
        data = loaded
    env_keys = {k[len(ENV_PREFIX) :].lower() for k in os.environ if k.startswith(ENV_PREFIX)}
    # Environment variables win over the file: drop file keys the environment sets.
    data = {k: v for k, v in data.items() if k not in env_keys}
    return OperatorSettings(**data)
