"""The ConfigMaps holding the rendered trainer and curation configs (JSON, no secrets)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

TRAINER_CONFIG_KEY = "trainer.json"
CURATION_CONFIG_KEY = "curation.json"


def config_json(config: BaseModel) -> str:
    """The config as the trainer reads it: stable key order, so the digest is stable."""
    return json.dumps(config.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def render_configmap(
    name: str, namespace: str, key: str, text: str, labels: dict[str, str], owner: dict[str, Any] | None
) -> dict[str, Any]:
    """A ConfigMap with one key; owned by `owner` (deleted with it by the garbage collector)."""
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {key: text}}
