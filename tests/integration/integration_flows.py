"""Steps of the real-cluster tests: what the kubelet (absent here) would write, and a record
of every answer the operator's own client gets."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from harness import OperatorProcess, eventually

from cpt_operator import kube
from cpt_operator.render.names import LABEL_CORPUS, curation_job_name

LONG = 120  # a real server, a real controller-manager and a busy 2-core machine: generous deadlines


def record_answers(op: OperatorProcess) -> list[tuple[str, str, int]]:
    """Every (verb, path, status) the operator's own client gets."""
    answers: list[tuple[str, str, int]] = []
    original = op.kube._request

    async def _request(method: str, path: str, verb: str, *args: Any, **kwargs: Any) -> Any:
        status, data = await original(method, path, verb, *args, **kwargs)
        answers.append((verb, path, status))
        return status, data

    op.kube._request = _request  # type: ignore[method-assign]
    return answers


@contextlib.asynccontextmanager
async def operator_and_clients(identities: dict[str, Any], settings: Any = None
                               ) -> AsyncIterator[tuple[list[tuple[str, str, int]], kube.KubeClient, kube.KubeClient]]:
    """The operator running as its ServiceAccount (with `settings`, else the tests' own), and a
    tenant-a and an admin client: (the operator's recorded answers, tenant, admin); all stopped after."""
    op = OperatorProcess(connection=identities["operator"].connection(), settings=settings)
    answers = record_answers(op)
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    admin = kube.KubeClient(identities["admin"].connection(), user_agent="test-admin")
    await op.start(timeout=LONG)
    try:
        yield answers, tenant, admin
    finally:
        await op.stop()
        await tenant.close()
        await admin.close()


def refused(answers: list[tuple[str, str, int]], *namespaces: str) -> list[tuple[str, str, int]]:
    """The operator's requests the server refused (403) for these namespaces or cluster-wide.
    Namespaces other tests left behind that the platform never opted in are out of the
    operator's reach by design (least privilege): their refusals are not this test's."""
    def ours(path: str) -> bool:
        return "/namespaces/" not in path or any(f"/namespaces/{ns}/" in path for ns in namespaces)

    return [a for a in answers if a[2] == 403 and ours(a[1])]


def refused_logs(records: list[str], *namespaces: str) -> list[str]:
    """Kopf's error lines about a refusal in these namespaces."""
    return [m for m in records if ("403" in m or "orbidden" in m) and any(ns in m for ns in namespaces)]


async def play_kubelet(admin: kube.KubeClient, namespace: str, corpus: str, report: dict[str, Any]) -> int:
    """Each pod of the curation Job (created by the real Job controller) succeeds, index 0 with the report."""
    job_name = curation_job_name(corpus)

    job = await eventually(lambda: admin.get(kube.JOBS, namespace, job_name), timeout=LONG, what="curation Job")
    wanted = min(job["spec"]["parallelism"], job["spec"]["completions"])

    async def pods() -> list[dict[str, Any]]:
        # The Job controller creates pods in batches (slow start): wait for all of them.
        found = await admin.list(kube.PODS, namespace, {"job-name": job_name})
        return found if len(found) >= wanted else []

    created = await eventually(pods, timeout=LONG, what=f"the {wanted} pods of the curation Job")
    assert all(LABEL_CORPUS in p["metadata"]["labels"] for p in created)
    done = 0
    for pod in created:
        index = pod["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index", "0")
        now = "2026-01-01T00:00:00Z"
        container = pod["spec"]["containers"][0]
        status = {
            "phase": "Succeeded",
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "imageID": "", "ready": False, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
                                         **({"message": json.dumps(report)} if index == "0" else {})}},
            }],
        }  # fmt: skip
        await admin.patch_status(kube.PODS, namespace, pod["metadata"]["name"], {"status": status})
        done += 1
    assert done == job["spec"]["completions"]
    return done


