"""Pieces shared by the trainer and curation pods: security context, volumes, the S3
credentials (referenced from the tenant's Secret, never copied), writable scratch dirs."""

from __future__ import annotations

from typing import Any

from cpt_operator.api.common import Location, SecretReference, StorageLocation
from cpt_operator.render.locations import pvc_claims

CONFIG_DIR = "/etc/cpt"
RUN_AS_USER = 1000


class ConflictingCredentials(ValueError):
    """Locations of one run or corpus name different credential Secrets (one set per pod)."""


def credentials_secret(*locations: Location | StorageLocation | None) -> SecretReference | None:
    """The one Secret reference the locations use, or None; ConflictingCredentials if several."""
    found: list[SecretReference] = []
    for loc in locations:
        ref = loc.s3.credentials_secret if loc is not None and loc.s3 is not None else None
        if ref is not None and ref not in found:
            found.append(ref)
    if len(found) > 1:
        names = ", ".join(sorted({f.name for f in found}))
        raise ConflictingCredentials(
            f"the locations reference different credential Secrets ({names}); a pod gets one set of S3 "
            "credentials: use one Secret (with the same keys) for all locations"
        )
    return found[0] if found else None


def credential_env(secret: SecretReference | None) -> list[dict[str, Any]]:
    """AWS_* variables read by the kubelet from the tenant's Secret (secretKeyRef)."""
    if secret is None:
        return []
    return [
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.access_key_id_key}}},
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.secret_access_key_key}},
        },
    ]


def scratch_env() -> list[dict[str, Any]]:
    """Caches pointed at the /tmp emptyDir: the root filesystem is read-only."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf-home"},
        {"name": "TRITON_CACHE_DIR", "value": "/tmp/triton"},
        {"name": "TORCHINDUCTOR_CACHE_DIR", "value": "/tmp/inductor"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]


def pod_identity(restart_policy: str | None = None) -> dict[str, Any]:
    """What every pod the operator creates shares: the tenant namespace's own `default`
    ServiceAccount (its IRSA/workload identity, if any), no API token (no pod of ours talks to
    the Kubernetes API), non-root."""
    out: dict[str, Any] = {"serviceAccountName": "default", "automountServiceAccountToken": False}
    if restart_policy is not None:
        out["restartPolicy"] = restart_policy
    out["securityContext"] = pod_security_context()
    return out


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def volumes_and_mounts(
    configmap: str, locations: list[Location | StorageLocation | None], pvc_mount_root: str, shm: bool,
    retain: tuple[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The config (read-only), /tmp, optionally a memory-backed /dev/shm (NCCL, data loaders),
    each PVC the locations name at <pvc_mount_root>/<claim>, and with `retain` = (ConfigMap,
    directory) the operator's retain list, optional (the pod starts before the first decision)
    and mounted without subPath, so the kubelet refreshes it in a running pod."""
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": configmap}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if shm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    for i, claim in enumerate(pvc_claims(*locations)):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{pvc_mount_root.rstrip('/')}/{claim}"})
    if retain is not None:
        volumes.append({"name": "retain", "configMap": {"name": retain[0], "optional": True}})
        mounts.append({"name": "retain", "mountPath": retain[1], "readOnly": True})
    return volumes, mounts
