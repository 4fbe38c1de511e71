"""Which spec fields of a started run may change, and detecting a change of the others.

The running PyTorchJob records a digest of the immutable fields (an annotation); a spec
whose digest differs is refused with a condition and the job is left as it is. The CRD's
CEL transition rules refuse the most important ones (baseModel, corpora,
tokenizerExtension) already at `kubectl apply` time, once `status.startedAt` is set.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# camelCase paths in spec. Changing any of them would change what a resumed run trains on
# or need different pods/checkpoints (ZeRO layout, world size, data order).
IMMUTABLE_RUN_FIELDS: tuple[str, ...] = (
    "baseModel",
    "corpora",
    "tokenizerExtension",
    "training.sequenceLength",
    "training.globalBatchSize",
    "training.microBatchSize",
    "training.seed",
    "deepspeed",
    "resources.nodePool",
    "resources.nodes",
    "resources.gpusPerNode",
    "resources.queueName",
    "resources.priorityClassName",
    "checkpointPolicyRef",
    "trainer",
)
"""Everything else (learning rate and schedule, mixing, evaluation, cpu/memory requests,
tolerations, suspend) is mutable: the ConfigMap is updated and a restarted or resumed
trainer reads it; `suspend` is applied to the PyTorchJob at once."""


def _resolve(spec: dict[str, Any], path: str) -> Any:
    node: Any = spec
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def immutable_values(spec: dict[str, Any]) -> dict[str, Any]:
    """The immutable fields of a (defaulted, camelCase) run spec."""
    return {path: _resolve(spec, path) for path in IMMUTABLE_RUN_FIELDS}


def _h(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()[:8]


def immutable_digest(spec: dict[str, Any]) -> str:
    """Per-field digests of the immutable fields, `field=digest;...` (stored on the PyTorchJob;
    a few hundred bytes, and a changed field can be named)."""
    return ";".join(f"{path}={_h(value)}" for path, value in immutable_values(spec).items())


def changed_immutable_fields(stored: str | None, spec: dict[str, Any]) -> list[str]:
    """The immutable fields whose value differs from what the job was created from ([] if none
    or nothing is stored). A field missing from the stored digest is not reported."""
    if not stored:
        return []
    old = dict(item.split("=", 1) for item in stored.split(";") if "=" in item)
    new = dict(item.split("=", 1) for item in immutable_digest(spec).split(";"))
    return [path for path in IMMUTABLE_RUN_FIELDS if path in old and old[path] != new.get(path)]
