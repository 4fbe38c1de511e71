"""Render the Job that deletes a run's PVC checkpoints when the run goes (deleteWithRun).

The operator cannot mount a tenant's volume, so a small pod in the tenant's namespace does
it: the operator image, non-root, the claim mounted where trainer pods mount it, and an
argv (no shell) that `cpt_operator.cleanup` checks again before deleting anything.
"""

from __future__ import annotations

from typing import Any

from cpt_operator.api.common import StorageLocation
from cpt_operator.render import names
from cpt_operator.render.pod import container_security_context, pod_identity
from cpt_operator.settings import OperatorSettings

TTL_SECONDS = 3600
"""The Job (and its pod) is removed this long after it finished; the operator reads its result before."""


def render_cleanup_job(namespace: str, run: str, uid: str, folder: str, storage: StorageLocation,
                       settings: OperatorSettings) -> dict[str, Any]:  # fmt: skip
    """`folder`: the run's checkpoint prefix as recorded when its job was created
    (`<storage>/<namespace>/<run>[/<uid>]`); the Job checks it again before deleting."""
    if storage.pvc is None:
        raise ValueError("a cleanup Job is only for PVC storage")
    claim = storage.pvc.claim_name
    root = settings.pvc_mount_root.rstrip("/")
    labels = names.run_labels(namespace, run, "cleanup")
    # No owner reference: a foreground deletion of the run would delete the Job before it ran.
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": names.cleanup_job_name(run, uid), "namespace": namespace, "labels": {**labels, names.LABEL_RUN_UID: uid}},
        "spec": {
            "backoffLimit": 2,
            "activeDeadlineSeconds": 1800,
            "ttlSecondsAfterFinished": TTL_SECONDS,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    **pod_identity(restart_policy="Never"),
                    "containers": [
                        {
                            "name": "cleanup",
                            "image": settings.cleanup_image,
                            "imagePullPolicy": "IfNotPresent",
                            "command": [
                                "python", "-m", "cpt_operator.cleanup", "--mount-root", root,
                                "--folder", folder, "--namespace", namespace, "--run", run,
                                *(["--uid", uid] if folder.rstrip("/").endswith("/" + uid) and uid else []),
                            ],  # fmt: skip
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                            "securityContext": container_security_context(),
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [
                                {"name": "checkpoints", "mountPath": f"{root}/{claim}"},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }
