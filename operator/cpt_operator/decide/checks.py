"""Platform checks against the operator's settings (pure): a run's node pool, image, priority
class and tolerations; a Corpus's curation Job (namespace, parallelism, GPUs, pool).

A failed check is a condition (Accepted=False) with a message the tenant can act on, and
nothing is rendered: never a pod that stays Pending on a pool it may not use, nor one that
preempts others or tolerates its way past the platform's taints.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from cpt_operator import conditions as c
from cpt_operator.api.common import Toleration
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.settings import NodePool, OperatorSettings

PRIORITY_CLASS_NOT_ALLOWED = "PriorityClassNotAllowed"
GRACE_PERIOD_EXCEEDS_LIMIT = "GracePeriodExceedsLimit"
TOLERATION_NOT_ALLOWED = "TolerationNotAllowed"
CURATION_NOT_ALLOWED = "CurationNotAllowed"
CURATION_EXCEEDS_LIMITS = "CurationExceedsLimits"
LOCAL_PATH_NOT_ALLOWED = "LocalPathNotAllowed"


@dataclass(frozen=True)
class Refusal:
    """Why a spec is not accepted: a condition reason and a message naming the field."""

    reason: str
    message: str


def check_pool(spec: CPTRunSpec, namespace: str, settings: OperatorSettings) -> tuple[NodePool | None, Refusal | None]:
    """The run's node pool, or why it may not use it."""
    name = spec.resources.node_pool
    pool = settings.pool(name)
    if pool is None:
        known = ", ".join(p.name for p in settings.node_pools if p.allows(namespace)) or "none"
        return None, Refusal(c.UNKNOWN_NODE_POOL, f"spec.resources.nodePool {name!r} is not a node pool of this platform; pools for namespace {namespace!r}: {known}")  # noqa: E501
    if not pool.allows(namespace):
        return None, Refusal(c.NODE_POOL_NOT_ALLOWED, f"namespace {namespace!r} may not use node pool {name!r}; ask the platform team or choose another pool")  # noqa: E501
    if spec.resources.gpus_per_node > pool.gpus_per_node:
        return None, Refusal(
            c.GPUS_EXCEED_POOL,
            f"spec.resources.gpusPerNode {spec.resources.gpus_per_node} exceeds the {pool.gpus_per_node} GPUs per node of pool {name!r}",
        )
    return pool, None


def check_image(spec: CPTRunSpec, settings: OperatorSettings) -> Refusal | None:
    """None when spec.trainer.image is unset or allowed by the settings."""
    image = spec.trainer.image
    if image is None or settings.image_allowed(image):
        return None
    return Refusal(c.IMAGE_NOT_ALLOWED, f"spec.trainer.image {image!r} is not in the platform's allowed trainer images; omit it to use {settings.trainer_image!r}")  # noqa: E501


def check_grace_period(spec: CPTRunSpec, settings: OperatorSettings) -> Refusal | None:
    """None when the run's own terminationGracePeriodSeconds is within the platform's limit."""
    asked, limit = spec.trainer.termination_grace_period_seconds, settings.max_termination_grace_period_seconds
    if asked is not None and asked > limit:
        return Refusal(GRACE_PERIOD_EXCEEDS_LIMIT, f"spec.trainer.terminationGracePeriodSeconds {asked} exceeds the platform's "
                                                   f"limit of {limit} s; lower it or ask the platform team")  # fmt: skip
    return None


def check_scheduling(spec: CPTRunSpec, pool: NodePool) -> Refusal | None:
    """None when the run's priority class and tolerations are within what its pool allows.

    Priority class: one of `pool.allowed_priority_classes` (empty: none may be set). A tenant
    toleration: a copy of one of the pool's own, or one for a key in
    `pool.allowed_toleration_keys`; a toleration without a key (with `Exists` it tolerates every
    taint: other pools, cordons, evictions) is always refused."""
    res = spec.resources
    if res.priority_class_name and res.priority_class_name not in pool.allowed_priority_classes:
        allowed = ", ".join(pool.allowed_priority_classes) or "none"
        return Refusal(PRIORITY_CLASS_NOT_ALLOWED, f"spec.resources.priorityClassName {res.priority_class_name!r} is not allowed on node pool {pool.name!r} (allowed: {allowed}); omit it or ask the platform team")  # noqa: E501
    for i, t in enumerate(res.tolerations):
        why = _toleration_refused(t, pool)
        if why:
            return Refusal(TOLERATION_NOT_ALLOWED, f"spec.resources.tolerations[{i}]: {why}; the pool's own tolerations are added for you")  # noqa: E501
    return None


def _toleration_refused(t: Toleration, pool: NodePool) -> str:
    if not t.key:
        return "a toleration without a key tolerates every taint and is never allowed"
    if t.to_wire() in [dict(p) for p in pool.tolerations]:
        return ""
    if t.key in pool.allowed_toleration_keys:
        return ""
    allowed = ", ".join(pool.allowed_toleration_keys) or "none"
    return f"taint key {t.key!r} is not one node pool {pool.name!r} lets runs tolerate (allowed keys: {allowed})"


def check_local_paths(locations: list[tuple[str, Any]], settings: OperatorSettings) -> Refusal | None:
    """None when every `local` location (field name, Location) lies under a root the platform
    allows (`allowed_local_roots`, absolute folders of the images; none by default). The path is
    normalised first, so `..` cannot climb out of a root."""
    roots = [posixpath.normpath(r) for r in settings.allowed_local_roots if r.startswith("/")]
    for field, loc in locations:
        local = getattr(loc, "local", None) if loc is not None else None
        if local is None:
            continue
        path = posixpath.normpath(local.path)
        if not any(root == "/" or path == root or path.startswith(root + "/") for root in roots):
            where = ", ".join(roots) or "none"
            return Refusal(LOCAL_PATH_NOT_ALLOWED, f"{field}.local.path {local.path!r} is not below a local folder the platform allows "
                                                   f"(setting allowedLocalRoots: {where}); use s3 or pvc")  # fmt: skip
    return None


def corpus_locations(spec: CorpusSpec) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [(f"spec.sources[{i}].location", s.location) for i, s in enumerate(spec.sources)]
    out.append(("spec.tokenizer", spec.tokenizer))
    quality = getattr(spec, "quality_filter", None)
    if quality is not None:
        out.append(("spec.qualityFilter.referenceModel", getattr(quality, "reference_model", None)))
    return out


def run_local_locations(spec: CPTRunSpec) -> list[tuple[str, Any]]:
    return [("spec.baseModel.location", spec.base_model.location), ("spec.baseModel.tokenizer", spec.base_model.tokenizer),
            *((f"spec.evaluation.generalEvals[{i}].taskFile", g.task_file) for i, g in enumerate(spec.evaluation.general_evals))]


def check_curation(spec: CorpusSpec, namespace: str, settings: OperatorSettings) -> tuple[NodePool | None, Refusal | None]:
    """The node pool of a GPU curation Job (None for CPU-only), or why the Corpus may not curate
    as asked: `settings.curation` bounds its namespace, parallelism and GPUs per pod, and GPU
    pods go to `curation.gpu_node_pool` under that pool's namespace and GPU checks."""
    cur = settings.curation
    if not cur.allows(namespace):
        return None, Refusal(CURATION_NOT_ALLOWED, f"namespace {namespace!r} may not run curation Jobs; ask the platform team")
    local = check_local_paths(corpus_locations(spec), settings)
    if local is not None:
        return None, local
    if spec.parallelism > cur.max_parallelism:
        return None, Refusal(CURATION_EXCEEDS_LIMITS, f"spec.parallelism {spec.parallelism} exceeds the platform's limit of {cur.max_parallelism} curation pods")  # noqa: E501
    gpu = spec.resources.gpu
    if not gpu:
        return None, None
    if gpu > cur.max_gpus_per_pod or not cur.gpu_node_pool:
        return None, Refusal(CURATION_EXCEEDS_LIMITS, f"spec.resources.gpu {gpu} exceeds the platform's limit of {cur.max_gpus_per_pod if cur.gpu_node_pool else 0} GPUs per curation pod")  # noqa: E501
    pool = settings.pool(cur.gpu_node_pool)
    if pool is None:
        return None, Refusal(CURATION_NOT_ALLOWED, f"the platform's curation GPU pool {cur.gpu_node_pool!r} is not a node pool; ask the platform team")  # noqa: E501
    if not pool.allows(namespace):
        return None, Refusal(CURATION_NOT_ALLOWED, f"namespace {namespace!r} may not use node pool {pool.name!r} for GPU curation; set spec.resources.gpu: 0 or ask the platform team")  # noqa: E501
    if gpu > pool.gpus_per_node:
        return None, Refusal(CURATION_EXCEEDS_LIMITS, f"spec.resources.gpu {gpu} exceeds the {pool.gpus_per_node} GPUs per node of pool {pool.name!r}")  # noqa: E501
    return pool, None
