"""Platform checks of a run against the operator's settings: node pool and image (pure).

A failed check is a condition on the run (Accepted=False) with a message the tenant can
act on, never a pod that stays Pending on a pool it may not use.
"""

from __future__ import annotations

from dataclasses import dataclass

from cpt_operator import conditions as c
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.settings import NodePool, OperatorSettings


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
