"""Moving folders between S3 (or an S3-compatible store) and local disk.

Models and corpora given as `s3://bucket/prefix` are staged to a local folder before use;
checkpoints are written locally and uploaded (boto3's managed multipart transfer). A key that
would be written outside the local folder (`..`, a leading `/`) is refused before anything of
the prefix is downloaded.
Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cpt_trainer.contract.config import S3Settings
from cpt_trainer.local_paths import PathOutsideFolder, resolve_inside
from cpt_trainer.train.errors import TrainerInputError

logger = logging.getLogger(__name__)

# Multipart above 64 MiB, in 64 MiB parts: checkpoint shards are GiB-sized.
_PART_BYTES = 64 * 1024 * 1024


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b") (no leading or trailing slash on the key)."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"not an s3 URI with a bucket: {uri}")
    return bucket, key.strip("/")


def join_s3(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


class S3Store:
    """A thin boto3 wrapper: list, download a prefix, upload a folder, delete."""

    def __init__(self, settings: S3Settings):
        import boto3
        from boto3.s3.transfer import TransferConfig

        self._client = boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region)
        self._transfer = TransferConfig(multipart_threshold=_PART_BYTES, multipart_chunksize=_PART_BYTES)

    def list_keys(self, uri: str) -> list[str]:
        """Every key below `uri` (treated as a folder), relative to it."""
        bucket, prefix = split_s3(uri)
        prefix = prefix + "/" if prefix else ""
        keys: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))
        return keys

    def list_files(self, uri: str) -> list[str]:
        """Names of the objects directly below `uri` (not in its subfolders)."""
        bucket, prefix = split_s3(uri)
        prefix = prefix + "/" if prefix else ""
        names: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names.extend(obj["Key"][len(prefix) :] for obj in page.get("Contents", []))
        return names

    def delete_object(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._client.delete_object(Bucket=bucket, Key=key)

    def list_folders(self, uri: str) -> list[str]:
        """Names of the immediate sub-folders of `uri`."""
        bucket, prefix = split_s3(uri)
        prefix = prefix + "/" if prefix else ""
        names: list[str] = []
        for page in self._client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
            names.extend(p["Prefix"][len(prefix) :].rstrip("/") for p in page.get("CommonPrefixes", []))
        return names

    def exists(self, uri: str) -> bool:
        bucket, key = split_s3(uri)
        resp = self._client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        return any(obj["Key"] == key for obj in resp.get("Contents", []))

    def download_folder(self, uri: str, local: Path) -> Path:
        """Copy every object below `uri` into `local`; `TrainerInputError` (and nothing written)
        when a key would land outside `local`."""
        bucket, prefix = split_s3(uri)
        targets: list[tuple[str, Path]] = []
        for rel in self.list_keys(uri):
            if not rel or rel.endswith("/"):
                continue
            key = f"{prefix}/{rel}" if prefix else rel
            try:
                targets.append((key, resolve_inside(local, rel)))
            except PathOutsideFolder:
                raise TrainerInputError(
                    f"S3 key {key!r} under s3://{bucket}/{prefix} would be written outside the local folder "
                    f"{local}: refused, nothing staged"
                ) from None
        local.mkdir(parents=True, exist_ok=True)
        for key, dest in targets:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            self._client.download_file(bucket, key, str(tmp), Config=self._transfer)
            os.replace(tmp, dest)
        logger.info("staged %d objects from %s to %s", len(targets), uri, local)
        return local

    def upload_file(self, path: Path, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._client.upload_file(str(path), bucket, key, Config=self._transfer)

    def upload_folder(self, local: Path, uri: str, skip: tuple[str, ...] = ()) -> int:
        """Upload every file below `local` to `uri/<relative path>`, except names in `skip`."""
        count = 0
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            rel = path.relative_to(local).as_posix()
            if rel in skip:
                continue
            self.upload_file(path, join_s3(uri, rel))
            count += 1
        return count

    def put_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = split_s3(uri)
        self._client.put_object(Bucket=bucket, Key=key, Body=data)

    def delete_folder(self, uri: str) -> None:
        bucket, prefix = split_s3(uri)
        keys = [f"{prefix}/{k}" for k in self.list_keys(uri)]
        for i in range(0, len(keys), 1000):
            self._client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})


def stage(uri: str, cache_dir: Path, settings: S3Settings, what: str) -> Path:
    """A local folder holding `uri`: the path itself, or a staged copy of an S3 prefix
    (in `cache_dir/<bucket>/<prefix>`, refused if that resolves outside `cache_dir`)."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.exists():
            raise TrainerInputError(f"{what} not found: {uri}")
        return path
    bucket, prefix = split_s3(uri)
    try:
        local = resolve_inside(cache_dir, f"{bucket}/{prefix}")
    except PathOutsideFolder:
        raise TrainerInputError(f"{what} {uri}: bucket and prefix would be staged outside {cache_dir}: refused") from None
    store = S3Store(settings)
    try:
        keys = store.list_keys(uri)
    except Exception as exc:  # noqa: BLE001 - any S3 failure is the same clear message
        raise TrainerInputError(f"{what} {uri} cannot be listed: {exc}") from None
    if not keys:
        raise TrainerInputError(f"{what} not found: {uri} holds no objects")
    return store.download_folder(uri, local)
