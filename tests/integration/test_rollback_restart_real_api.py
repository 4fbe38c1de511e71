"""The cluster half of action Rollback, against a real kube-apiserver: once the control loop
has recorded a rollback (status.rollbacks, outcome Restarting; the decision itself is tested in
tests/control/test_control_rollback.py), the run's reconcile writes the rollback's trainer
config (resume step, attempt, scaled mix and learning rate), stops the PyTorchJob, and starts it
again only after the training operator reports it Suspended (its pods gone), so every new pod
reads the new config; then the attempt is Resumed. There is no training operator here: the
test writes the job's Suspended condition as it would, and the control loop's two writes
(status.rollbacks, then the job stopped)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flows import REPORT, apply_all
from harness import OperatorProcess, eventually
from integration_flows import LONG, play_kubelet
from integration_setup import Identity
from manifests import example

from cpt_operator import kube
from cpt_operator.render.configmap import TRAINER_CONFIG_KEY
from cpt_operator.render.names import pytorchjob_name, trainer_configmap_name

pytestmark = pytest.mark.timeout(300)
RUN = "docs-cpt"


async def test_a_recorded_rollback_restarts_the_job_with_the_rollback_config(identities: dict[str, Identity], namespace: str) -> None:
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    admin = kube.KubeClient(identities["admin"].connection(), user_agent="test-admin")
    objs = example("minimal", namespace)
    spec = objs[f"CPTRun/{RUN}"]["spec"]
    spec["evaluation"] = {**spec.get("evaluation", {}), "action": "Rollback",
                          "rollback": {"maxAttempts": 2, "alphaFactor": 1.0, "learningRateFactor": 0.5}}  # fmt: skip
    # (the minimal example has no replay corpus: the API server refuses alphaFactor below 1 for it)
    op = OperatorProcess(connection=identities["operator"].connection())
    await op.start(timeout=LONG)
    try:
        await apply_all(tenant, list(objs.values()))
        await play_kubelet(admin, namespace, "docs", REPORT)
        job_name = pytorchjob_name(RUN)
        await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, job_name), timeout=LONG, what="PyTorchJob")
        before = await _config(admin, namespace)
        assert before["attempt"] == 0 and before["checkpoint"]["resume_step"] is None
        running = [{"type": "Created", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                   {"type": "Running", "status": "True", "lastTransitionTime": "2026-01-01T00:00:01Z"}]  # fmt: skip
        await admin.patch_status(kube.PYTORCHJOBS, namespace, job_name, {"status": {"conditions": running}})

        # What the control loop writes when it decides the rollback.
        record = {"attempt": 1, "fromStep": 500, "atStep": 1500, "regression": 0.06, "alpha": before["data"]["alpha"],
                  "learningRate": before["optim"]["learning_rate"] * 0.5, "outcome": "Restarting", "at": "2026-01-01T00:00:02Z"}  # fmt: skip
        await admin.patch_status(kube.CPTRUNS, namespace, RUN, {"status": {"rollbacks": [record]}})
        # ... and then stops the job (handlers/control.py; no Kueue here: runPolicy.suspend). Kopf's
        # update handler ignores status changes: the job's change is what wakes the run's reconcile.
        await admin.patch(kube.PYTORCHJOBS, namespace, job_name, {"spec": {"runPolicy": {"suspend": True}}})

        async def stopped_with_new_config() -> dict[str, Any] | None:
            job = await admin.get(kube.PYTORCHJOBS, namespace, job_name)
            config = await _config(admin, namespace)
            return config if job["spec"]["runPolicy"].get("suspend") is True and config["attempt"] == 1 else None

        after = await eventually(stopped_with_new_config, timeout=LONG, what="the job stopped with the rollback's config")
        assert after["checkpoint"]["resume_step"] == 500
        assert after["data"]["alpha"] == pytest.approx(before["data"]["alpha"])
        assert after["optim"]["learning_rate"] == pytest.approx(before["optim"]["learning_rate"] * 0.5)
        run = await tenant.get(kube.CPTRUNS, namespace, RUN)
        assert run["status"]["rollbacks"][0]["outcome"] == "Restarting"  # not started again while pods may remain

        # The training operator deletes the pods and reports Suspended: the job starts again.
        suspended = running + [{"type": "Suspended", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}]
        await admin.patch_status(kube.PYTORCHJOBS, namespace, job_name, {"status": {"conditions": suspended}})

        async def resumed() -> bool:
            job = await admin.get(kube.PYTORCHJOBS, namespace, job_name)
            run = await tenant.get(kube.CPTRUNS, namespace, RUN)
            return job["spec"]["runPolicy"].get("suspend") is not True and run["status"]["rollbacks"][0]["outcome"] == "Resumed"

        await eventually(resumed, timeout=LONG, what="the job started again and the attempt Resumed")
        assert (await _config(admin, namespace))["checkpoint"]["resume_step"] == 500
    finally:
        await op.stop()
        await tenant.close()
        await admin.close()


async def _config(admin: kube.KubeClient, namespace: str) -> dict[str, Any]:
    configmap = await admin.get(kube.CONFIGMAPS, namespace, trainer_configmap_name(RUN))
    return json.loads(configmap["data"][TRAINER_CONFIG_KEY])
