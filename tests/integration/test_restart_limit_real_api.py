"""The restart limit against the real training operator v1.8.1 (restartPolicy ExitCode) on the
real control plane. There is no kubelet: the test writes the Master pod's status as one would.

A pod killed at every start (exit 137, an OOM kill) is recreated by the training operator every
time: its own `runPolicy.backoffLimit` (rendered from the same setting, 1 here) never fails the
job, since it only counts container restarts in place. The operator counts the job's restarts
(status.restarts), and past the limit stops the job (runPolicy.suspend: no Kueue here), so the
training operator deletes its pods, and fails the run with reason RestartLimitExceeded; a later
reconcile leaves it so. A 1-127 exit fails the job at once and is not counted.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest
import real_cluster
from flows import REPORT, apply_all, condition, wait_phase
from harness import eventually
from harness import test_settings as operator_settings
from integration_flows import LONG, operator_and_clients, play_kubelet, refused
from integration_setup import Identity
from manifests import example

from cpt_operator import kube
from cpt_operator.settings import OperatorSettings
from cpt_operator.handlers.startup import DIFFBASE_KEY
from cpt_operator.render.names import pytorchjob_name

pytestmark = pytest.mark.timeout(600)
RUN = "docs-cpt"
LIMIT = 1
MASTER = f"{pytorchjob_name(RUN)}-master-0"


@pytest.fixture(scope="module")
def training_operator(installed: Any, admin: Identity) -> Iterator[None]:
    real_cluster.start_training_operator()
    admin._plurals.clear()
    yield
    real_cluster.stop_addons()


def true(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    conds = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conds if c["type"] == type_ and c["status"] == "True"), None)


async def report(adm: kube.KubeClient, namespace: str, pod: dict[str, Any], exit_code: int | None) -> None:
    """What the kubelet writes: the trainer container running (None), or exited with `exit_code`."""
    container = pod["spec"]["containers"][0]
    now = "2026-01-01T00:00:00Z"
    if exit_code is None:
        phase, ready, state = "Running", True, {"running": {"startedAt": now}}
    else:
        reason = "OOMKilled" if exit_code == 137 else "Error"
        phase, ready, state = "Failed", False, {"terminated": {"exitCode": exit_code, "reason": reason, "startedAt": now, "finishedAt": now}}
    status = {"phase": phase, "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                                     "ready": ready, "restartCount": 0, "state": state}]}  # fmt: skip
    await adm.patch_status(kube.PODS, namespace, pod["metadata"]["name"], {"status": status})


def _at_limit() -> OperatorSettings:
    settings = operator_settings()
    settings.backoff_limit = LIMIT
    return settings


async def start(tenant: kube.KubeClient, adm: kube.KubeClient, namespace: str) -> None:
    await apply_all(tenant, list(example("minimal", namespace).values()))  # as the tenant applies them
    await play_kubelet(adm, namespace, "docs", REPORT)
    await eventually(lambda: adm.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)), timeout=LONG, what="PyTorchJob")


async def test_a_pod_killed_at_every_start_is_stopped_after_the_limit_and_the_run_fails(
    identities: dict[str, Identity], namespace: str, training_operator: None
) -> None:
    job_name = pytorchjob_name(RUN)
    async with operator_and_clients(identities, _at_limit()) as (answers, tenant, adm):
        await start(tenant, adm, namespace)
        job = await adm.get(kube.PYTORCHJOBS, namespace, job_name)
        assert job["spec"]["runPolicy"]["backoffLimit"] == LIMIT and job["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolicy"] == "ExitCode"
        seen: set[str] = set()
        status: dict[str, Any] = {}
        # Restarts less than a second apart may count once (the condition's time has whole
        # seconds): a few pods more than the limit needs, never an endless loop.
        for _ in range(LIMIT + 5):
            pod = await eventually(lambda: _new_master(adm, namespace, seen), timeout=LONG, what="a new Master pod")
            seen.add(pod["metadata"]["uid"])
            await report(adm, namespace, pod, None)
            await eventually(lambda: _job_true(adm, namespace, "Running"), timeout=LONG, what="the job Running")
            await report(adm, namespace, pod, 137)
            status = await eventually(lambda: _caught_up(adm, tenant, namespace), timeout=LONG,
                                      what="the operator seeing the training operator's restart")  # fmt: skip
            if status.get("phase") == "Failed":
                break
        assert status.get("phase") == "Failed", status
        failed = condition(status, "Failed")
        assert failed["status"] == "True" and failed["reason"] == "RestartLimitExceeded", failed
        assert f"restarted {LIMIT + 1} times" in failed["message"] and "checkpoints are kept" in failed["message"]
        assert status["restarts"]["count"] == LIMIT + 1 and len(seen) >= LIMIT + 1
        # Stopped as a halt stops it: suspended, and the training operator deletes the pods.
        await eventually(lambda: _stopped(adm, namespace), timeout=LONG, what="the job suspended and its pods gone")
        job = await adm.get(kube.PYTORCHJOBS, namespace, job_name)
        # The training operator's own backoffLimit never failed it, though it was passed.
        assert true(job, "Failed") is None, job["status"]

        # A later reconcile (a label the tenant adds wakes it) leaves it failed and stopped.
        before = await _handled_labels(tenant, namespace)
        await tenant.patch(kube.CPTRUNS, namespace, RUN, {"metadata": {"labels": {"team": "nlp"}}})
        await eventually(lambda: _handled_since(tenant, namespace, before), timeout=LONG, what="the reconcile of the label change")
        later = (await tenant.get(kube.CPTRUNS, namespace, RUN))["status"]
        assert later["phase"] == "Failed" and condition(later, "Failed")["reason"] == "RestartLimitExceeded"
        assert later["restarts"] == status["restarts"]
        assert await _stopped(adm, namespace)
        events = await adm.list(kube.Resource("", "v1", "events"), namespace)
        assert any(e.get("reason") == "RestartLimitExceeded" and e["involvedObject"]["name"] == RUN for e in events)
    assert not refused(answers, namespace), refused(answers, namespace)


async def test_a_permanent_exit_fails_the_job_at_once_and_is_not_counted(
    identities: dict[str, Identity], namespace: str, training_operator: None
) -> None:
    async with operator_and_clients(identities, _at_limit()) as (_, tenant, adm):
        await start(tenant, adm, namespace)
        pod = await eventually(lambda: _new_master(adm, namespace, set()), timeout=LONG, what="the Master pod")
        await report(adm, namespace, pod, 1)
        status = await wait_phase(tenant, kube.CPTRUNS, namespace, RUN, "Failed", timeout=LONG)
        assert condition(status, "Failed")["reason"] == "JobFailed", status
        assert "restarts" not in status
        job = await adm.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
        assert true(job, "Failed") is not None and true(job, "Restarting") is None


async def _new_master(adm: kube.KubeClient, namespace: str, seen: set[str]) -> dict[str, Any] | None:
    pod = await adm.get(kube.PODS, namespace, MASTER)
    if pod is None or pod["metadata"]["uid"] in seen or pod["metadata"].get("deletionTimestamp"):
        return None
    return pod


async def _job_true(adm: kube.KubeClient, namespace: str, type_: str) -> dict[str, Any] | None:
    return true(await adm.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)), type_)


async def _caught_up(adm: kube.KubeClient, tenant: kube.KubeClient, namespace: str) -> dict[str, Any] | None:
    """The run's status once the operator has seen the job's current Restarting condition (or failed the run)."""
    restarting = await _job_true(adm, namespace, "Restarting")
    status = (await tenant.get(kube.CPTRUNS, namespace, RUN)).get("status") or {}
    if status.get("phase") == "Failed":
        return status
    if restarting is None:
        return None
    return status if (status.get("restarts") or {}).get("lastRestartTime") == restarting["lastTransitionTime"] else None


async def _stopped(adm: kube.KubeClient, namespace: str) -> bool:
    job = await adm.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN))
    return job["spec"]["runPolicy"].get("suspend") is True and await adm.get(kube.PODS, namespace, MASTER) is None


async def _handled_labels(tenant: kube.KubeClient, namespace: str) -> str | None:
    """The labels' digest in Kopf's record of the last handled body (written after the handler ran)."""
    meta = (await tenant.get(kube.CPTRUNS, namespace, RUN))["metadata"]
    text = (meta.get("annotations") or {}).get(f"cpt.dev/{DIFFBASE_KEY}")
    return ((json.loads(text) if text else {}).get("metadata") or {}).get("labels")


async def _handled_since(tenant: kube.KubeClient, namespace: str, before: str | None) -> bool:
    return await _handled_labels(tenant, namespace) != before
