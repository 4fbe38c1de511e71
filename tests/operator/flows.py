"""Steps of the integration tests: act as tenant, as the training operator and as Kueue."""

from __future__ import annotations

import json
from typing import Any

from harness import eventually
from manifests import apply

from cpt_operator import kube
from cpt_operator.render.names import LABEL_CORPUS, LABEL_MANAGED_BY, MANAGED_BY, curation_job_name, pytorchjob_name

REPORT = {
    "documents": 9100, "tokens": 12_000_000, "shards": 3, "output_uri": "s3://legal-team-data/curated/contracts-v1",
    "stages": [{"name": "exact_dedup", "input": 10000, "removed": 900, "modified": 0}],
    "tokenizer": {"chars_per_token": 4.1, "fertility": 1.3, "proposed_extension": ["indemnification"]},
}  # fmt: skip


async def status_of(client: kube.KubeClient, res: kube.Resource, ns: str, name: str) -> dict[str, Any]:
    obj = await client.get(res, ns, name)
    return (obj or {}).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


async def wait_phase(client: kube.KubeClient, res: kube.Resource, ns: str, name: str, phase: str, timeout: float = 15) -> dict[str, Any]:
    async def check() -> Any:
        st = await status_of(client, res, ns, name)
        return st if st.get("phase") == phase else None

    return await eventually(check, timeout=timeout, what=f"{res.plural} {ns}/{name} phase {phase}")


async def wait_object(client: kube.KubeClient, res: kube.Resource, ns: str, name: str, timeout: float = 15) -> dict[str, Any]:
    return await eventually(lambda: client.get(res, ns, name), timeout=timeout, what=f"{res.plural} {ns}/{name}")


async def finish_curation(client: kube.KubeClient, ns: str, corpus: str, report: dict[str, Any] | None = None) -> None:
    """What the Job controller and kubelet would write for a successful curation."""
    job = await wait_object(client, kube.JOBS, ns, curation_job_name(corpus))
    if report is not None:
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{job['metadata']['name']}-0-abcde", "namespace": ns,
                         "labels": {LABEL_CORPUS: corpus, LABEL_MANAGED_BY: MANAGED_BY},
                         "annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
            "status": {"containerStatuses": [{"name": "curate", "state": {"terminated": {"exitCode": 0, "message": json.dumps(report)}}}]},
        }  # fmt: skip
        await client.create(kube.PODS, ns, pod)
    n = job["spec"]["completions"]
    await client.patch(kube.JOBS, ns, job["metadata"]["name"],
                       {"status": {"succeeded": n, "active": 0, "conditions": [{"type": "Complete", "status": "True"}]}})  # fmt: skip


async def set_job_conditions(client: kube.KubeClient, ns: str, run: str, *types: str, suspend: bool | None = None) -> None:
    """The training operator (and, for suspend, Kueue) updating the PyTorchJob."""
    body: dict[str, Any] = {"status": {"conditions": [{"type": t, "status": "True", "lastTransitionTime": f"2024-01-01T00:00:{i:02d}Z"}
                                                      for i, t in enumerate(types)]}}  # fmt: skip
    if suspend is not None:
        body["spec"] = {"runPolicy": {"suspend": suspend}}
    await client.patch(kube.PYTORCHJOBS, ns, pytorchjob_name(run), body)


async def apply_all(client: kube.KubeClient, bodies: list[dict[str, Any]]) -> None:
    for body in bodies:
        await apply(client, body)
