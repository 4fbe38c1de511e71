"""A benchmark that cannot run is a condition on the CPTRun, against a real kube-apiserver.

The trainer stops before training when a configured benchmark's task file is missing and
writes `{"reason": "EvaluationUnavailable", ...}` to its termination message
(tests/trainer/test_benchmarks.py checks that side). Here the operator, as its own identity
with the chart's RBAC, reads that message from the run's master pod and sets
`EvaluationUnavailable=True` naming the eval. There is no kubelet or training operator: the
test writes the pod and the PyTorchJob's Failed condition as they would.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flows import REPORT, apply_all, condition, wait_phase
from harness import OperatorProcess, eventually
from integration_flows import LONG, play_kubelet
from integration_setup import Identity
from manifests import example

from cpt_operator import kube
from cpt_operator.render.configmap import TRAINER_CONFIG_KEY
from cpt_operator.render.names import pytorchjob_name, trainer_configmap_name

pytestmark = pytest.mark.timeout(300)
RUN = "docs-cpt"


async def _fail_master_pod(admin: kube.KubeClient, namespace: str, job: dict[str, Any], message: str) -> None:
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job['metadata']['name']}-master-0", "namespace": namespace,
                     "labels": dict(template["metadata"]["labels"])},
        "spec": template["spec"],
    }  # fmt: skip
    created = await admin.create(kube.PODS, namespace, pod)
    container = created["spec"]["containers"][0]
    now = "2026-01-01T00:00:00Z"
    status = {"phase": "Failed", "containerStatuses": [{
        "name": container["name"], "image": container["image"], "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 2, "reason": "Error", "startedAt": now, "finishedAt": now, "message": message}},
    }]}  # fmt: skip
    await admin.patch_status(kube.PODS, namespace, pod["metadata"]["name"], {"status": status})
    conds = [{"type": "Created", "status": "True", "lastTransitionTime": now},
             {"type": "Failed", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z", "reason": "PyTorchJobFailed",
              "message": f"PyTorchJob {job['metadata']['name']} is failed because 1 Master replica(s) failed."}]  # fmt: skip
    await admin.patch_status(kube.PYTORCHJOBS, namespace, job["metadata"]["name"], {"status": {"conditions": conds}})


async def test_a_missing_task_file_becomes_evaluation_unavailable_naming_the_eval(
    identities: dict[str, Identity], namespace: str
) -> None:
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    admin = kube.KubeClient(identities["admin"].connection(), user_agent="test-admin")
    objs = example("minimal", namespace)
    objs[f"CPTRun/{RUN}"]["spec"].setdefault("evaluation", {})["generalEvals"] = [
        {"name": "cloze", "kind": "lmEvalHarness", "taskFile": {"s3": {"uri": "s3://tenant-benchmarks/cloze/"}}, "limit": 50},
    ]  # fmt: skip
    op = OperatorProcess(connection=identities["operator"].connection())
    await op.start(timeout=LONG)
    try:
        await apply_all(tenant, list(objs.values()))
        await play_kubelet(admin, namespace, "docs", REPORT)
        job = await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(RUN)), timeout=LONG, what="PyTorchJob")
        configmap = await admin.get(kube.CONFIGMAPS, namespace, trainer_configmap_name(RUN))
        config = json.loads(configmap["data"][TRAINER_CONFIG_KEY])
        assert config["eval"]["general"][0] == {"name": "cloze", "kind": "lm_eval", "uri": "s3://tenant-benchmarks/cloze",
                                                "task_schema": "multiple_choice", "limit": 50}  # fmt: skip
        report = {"reason": "EvaluationUnavailable", "eval": "cloze",
                  "message": "eval.general cloze: task file not found: s3://tenant-benchmarks/cloze/ holds no objects"}  # fmt: skip
        await _fail_master_pod(admin, namespace, job, json.dumps(report))

        async def unavailable() -> dict[str, Any] | None:
            run = await tenant.get(kube.CPTRUNS, namespace, RUN)
            cond = condition(run.get("status") or {}, "EvaluationUnavailable")
            return cond if cond and cond["status"] == "True" else None

        cond = await eventually(unavailable, timeout=LONG, what="EvaluationUnavailable=True on the run")
        assert cond["reason"] == "BenchmarkCannotRun"
        assert "generalEvals cloze" in cond["message"] and "holds no objects" in cond["message"]
        status = await wait_phase(tenant, kube.CPTRUNS, namespace, RUN, "Failed", timeout=LONG)
        assert condition(status, "Failed")["status"] == "True"
    finally:
        await op.stop()
        await tenant.close()
        await admin.close()
