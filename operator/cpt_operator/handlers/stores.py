"""A run's S3 checkpoint store with the tenant's own credentials (read from the tenant's
Secret at the moment of use, never copied or logged), for the control loop and the deletion handler."""

from __future__ import annotations

import base64
from typing import Any

from cpt_operator import kube
from cpt_operator.api.common import StorageLocation
from cpt_operator.control.storage import S3CheckpointStore
from cpt_operator.handlers.context import OperatorContext
from cpt_operator.render.locations import run_prefix


class CredentialsMissing(Exception):
    """The Secret the storage names does not exist or lacks a key."""


async def s3_store_for(ctx: OperatorContext, namespace: str, run: str, storage: StorageLocation) -> S3CheckpointStore:
    s3 = storage.s3
    if s3 is None:
        raise ValueError("not S3 storage")
    import boto3

    kwargs: dict[str, Any] = {"endpoint_url": s3.endpoint, "region_name": s3.region}
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
    client = boto3.client("s3", **kwargs)
    return S3CheckpointStore(run_prefix(storage, namespace, run, ctx.settings.pvc_mount_root), client)
