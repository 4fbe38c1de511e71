"""Tenant objects for the tests, from the shipped examples (namespace replaced)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from cpt_operator import kube

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESOURCE_OF = {"Corpus": kube.CORPORA, "CheckpointPolicy": kube.CHECKPOINT_POLICIES, "CPTRun": kube.CPTRUNS}


def example(folder: str, namespace: str) -> dict[str, dict[str, Any]]:
    """Every document of examples/<folder> by `Kind/name`, in `namespace`."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((EXAMPLES / folder).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                doc = copy.deepcopy(doc)
                doc["metadata"]["namespace"] = namespace
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def secret(namespace: str, name: str = "legal-team-s3") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
        "data": {"AWS_ACCESS_KEY_ID": "QUtJQQ==", "AWS_SECRET_ACCESS_KEY": "c2VjcmV0"},
    }  # fmt: skip


async def apply(client: kube.KubeClient, body: dict[str, Any]) -> dict[str, Any]:
    res = RESOURCE_OF.get(body["kind"]) or {"Secret": kube.SECRETS}[body["kind"]]
    return await client.create(res, body["metadata"]["namespace"], body)
