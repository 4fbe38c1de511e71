"""A run's S3 checkpoint store for the control loop and the deletion handler.

Credentials: the tenant's own, read from the tenant's Secret at the moment of use (never copied
or logged). The operator's own cloud identity (IRSA, workload identity) is used only for a
policy without `credentialsSecret` whose storage the platform granted to the run's namespace
(settings `storageGrants`); otherwise the store refuses every operation before any request.

Endpoints: AWS's default, or one on the platform's allowlist (settings `allowedS3Endpoints`);
any other is refused before a request carries credentials, the tenant's or the operator's.

Every client has connect/read timeouts and bounded retries; listings are capped
(`control.storage.MAX_LIST_PAGES` / `MAX_LIST_OBJECTS`) and metrics.json reads are size-capped.
"""

from __future__ import annotations

import base64
from typing import Any

from cpt_operator import kube
from cpt_operator.api.common import StorageLocation
from cpt_operator.control.storage import CheckpointStore, RefusedCheckpointStore, S3CheckpointStore
from cpt_operator.handlers.context import OperatorContext
from cpt_operator.render.locations import run_prefix
from cpt_operator.settings import OperatorSettings

S3_CONNECT_TIMEOUT = 5.0
S3_READ_TIMEOUT = 20.0
S3_MAX_ATTEMPTS = 3


class CredentialsMissing(Exception):
    """The Secret the storage names does not exist or lacks a key."""


def _norm_endpoint(endpoint: str) -> str:
    return endpoint.strip().rstrip("/").lower()


def endpoint_allowed(settings: OperatorSettings, endpoint: str | None) -> bool:
    """AWS's default endpoint (None) always; any other only when on `allowed_s3_endpoints`."""
    if endpoint is None:
        return True
    return _norm_endpoint(endpoint) in {_norm_endpoint(e) for e in settings.allowed_s3_endpoints}


def _under(uri: str, base: str, may_be_below: bool) -> bool:
    uri, base = uri.rstrip("/"), base.rstrip("/")
    return uri == base or (may_be_below and uri.startswith(base + "/"))


def operator_identity_granted(settings: OperatorSettings, namespace: str, storage: StorageLocation) -> bool:
    """Whether the platform granted `namespace` this storage for the operator's own identity: a
    grant for the namespace whose uri the policy's equals (or lies below, for a grant with
    `{namespace}`), on the same endpoint. With the uri fixed by the platform, run prefixes
    `<uri>/<namespace>/<run>/` of different runs never overlap."""
    s3 = storage.s3
    if s3 is None:
        return False
    for grant in settings.storage_grants:
        if not grant.allows(namespace):
            continue
        if (grant.endpoint and _norm_endpoint(grant.endpoint)) != (s3.endpoint and _norm_endpoint(s3.endpoint)):
            continue
        templated = "{namespace}" in grant.uri
        if _under(s3.uri, grant.uri.replace("{namespace}", namespace), templated):
            return True
    return False


def s3_client_config() -> Any:
    from botocore.config import Config

    return Config(connect_timeout=S3_CONNECT_TIMEOUT, read_timeout=S3_READ_TIMEOUT,
                  retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS})  # fmt: skip


async def s3_store_for(ctx: OperatorContext, namespace: str, run: str, storage: StorageLocation,
                       prefix: str | None = None) -> CheckpointStore:  # fmt: skip
    """The run's store, or a RefusedCheckpointStore that says why the operator will not reach it.
    `prefix`: the run's own prefix as recorded (status.checkpointStorage); by default its
    uid-less one, `<storage>/<namespace>/<run>`."""
    s3 = storage.s3
    if s3 is None:
        raise ValueError("not S3 storage")
    prefix = prefix or run_prefix(storage, namespace, run, ctx.settings.pvc_mount_root)
    if not endpoint_allowed(ctx.settings, s3.endpoint):
        return RefusedCheckpointStore(
            prefix, f"endpoint {s3.endpoint!r} is not on the operator's allowlist (setting allowedS3Endpoints); "
            "no request is made to it, and nothing is listed or deleted",
        )  # fmt: skip
    import boto3

    kwargs: dict[str, Any] = {"endpoint_url": s3.endpoint, "region_name": s3.region, "config": s3_client_config()}
    ref = s3.credentials_secret
    if ref is not None:
        secret = await ctx.kube.get(kube.SECRETS, namespace, ref.name)
        if secret is None:
            raise CredentialsMissing(f"Secret {ref.name!r} does not exist in namespace {namespace!r}")
        data = secret.get("data") or {}
        try:
            kwargs["aws_access_key_id"] = base64.b64decode(data[ref.access_key_id_key]).decode()
            kwargs["aws_secret_access_key"] = base64.b64decode(data[ref.secret_access_key_key]).decode()
        except KeyError as exc:
            raise CredentialsMissing(f"Secret {ref.name!r} has no key {exc.args[0]!r}") from None
        except (TypeError, ValueError):  # not base64 text (binascii.Error is a ValueError)
            raise CredentialsMissing(f"Secret {ref.name!r} has an unreadable credential key") from None
        # Only the Secret's keys: no session token or profile of the operator's own comes along.
        client = boto3.client("s3", **kwargs)
    elif operator_identity_granted(ctx.settings, namespace, storage):
        client = boto3.client("s3", **kwargs)  # the operator's own identity, on a granted prefix only
    else:
        return RefusedCheckpointStore(
            prefix, f"the CheckpointPolicy names no credentialsSecret and the operator's settings (storageGrants) grant "
            f"namespace {namespace!r} no use of its own identity for {s3.uri}; nothing is listed or deleted",
        )  # fmt: skip
    return S3CheckpointStore(prefix, client)
