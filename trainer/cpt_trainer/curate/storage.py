"""Where curation reads and writes: local (or PVC) paths and S3 prefixes through boto3.

Inputs are listed in a stable order and opened as binary streams (S3 objects are streamed,
not downloaded, except parquet which needs random access). Outputs go through `OutputStore`,
whose writes are atomic: a local file is written under a temporary name and renamed when
whole; an S3 object appears only once its upload completed.
"""

from __future__ import annotations

import fnmatch
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cpt_trainer.contract.config import CorpusSourceConfig, S3Settings
from cpt_trainer.curate.errors import CurationInputError
from cpt_trainer.local_paths import PathOutsideFolder, resolve_inside

TMP_MARK = ".tmp-"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b` -> ("bucket", "a/b")."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise CurationInputError(f"S3 URI without a bucket: {uri}")
    return bucket, key


_clients: dict[tuple, object] = {}


def s3_client(settings: S3Settings):
    """A boto3 S3 client for the settings (credentials from the environment), cached."""
    key = (settings.endpoint_url, settings.region)
    if key not in _clients:
        import boto3

        _clients[key] = boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region or "us-east-1")
    return _clients[key]


@dataclass(frozen=True)
class InputFile:
    """One input file; `index` is its position in the corpus-wide listing."""

    uri: str
    size: int
    index: int = 0


def _included(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    if name.startswith((".", "_")):  # .crc, _SUCCESS and similar side files of data tools
        return False
    for pat in patterns:
        if fnmatch.fnmatchcase(rel, pat):
            return True
        if pat.startswith("**/") and fnmatch.fnmatchcase(rel, pat[3:]):
            return True
    return False


def _list_local(source: CorpusSourceConfig) -> list[tuple[str, int]]:
    root = Path(source.uri)
    if not root.is_absolute():
        raise CurationInputError(f"local source {source.uri!r} must be an absolute path")
    if root.is_file():
        return [(str(root), root.stat().st_size)]
    if not root.is_dir():
        raise CurationInputError(f"source {source.uri} does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if _included(rel, source.include):
                try:
                    size = path.stat().st_size
                except OSError:
                    size = 0  # dangling link or similar: listed, then reported as unreadable
                found.append((str(path), size))
    return sorted(found)


def _list_s3(source: CorpusSourceConfig, settings: S3Settings) -> list[tuple[str, int]]:
    bucket, prefix = split_s3(source.uri)
    client = s3_client(settings)
    found = []
    paginator = client.get_paginator("list_objects_v2")
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/"):
                    continue
                if key == prefix:  # the prefix names one object
                    found.append((f"s3://{bucket}/{key}", int(obj["Size"])))
                    continue
                rel = key[len(prefix) :].lstrip("/") if prefix else key
                if prefix and not prefix.endswith("/") and not key[len(prefix) :].startswith("/"):
                    continue  # s3://b/data must not take s3://b/database/...
                if _included(rel, source.include):
                    found.append((f"s3://{bucket}/{key}", int(obj["Size"])))
    except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError...
        raise CurationInputError(f"cannot list {source.uri}: {exc}") from None
    return sorted(found)


def list_inputs(sources: list[CorpusSourceConfig], settings: S3Settings) -> list[InputFile]:
    """Every input file of the corpus in a stable order (sources in config order, files sorted)."""
    files: list[InputFile] = []
    for source in sources:
        listed = _list_s3(source, settings) if is_s3(source.uri) else _list_local(source)
        for uri, size in listed:
            files.append(InputFile(uri, size, len(files)))
    return files


class _StreamingBodyIO(io.RawIOBase):
    """botocore's StreamingBody as a raw stream, so it can be buffered and decompressed."""

    def __init__(self, body):
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._body.close()
        super().close()


def open_input(file: InputFile, settings: S3Settings) -> BinaryIO:
    """A buffered binary stream of the file's raw (maybe compressed) bytes."""
    if is_s3(file.uri):
        bucket, key = split_s3(file.uri)
        body = s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"]
        return io.BufferedReader(_StreamingBodyIO(body), buffer_size=1 << 20)
    return open(file.uri, "rb", buffering=1 << 20)


def fetch_to_local(uri: str, settings: S3Settings, tmpdir: str) -> str:
    """A local path holding the file or folder at `uri` (S3 objects are downloaded below `tmpdir`;
    a key that would land outside it is refused before anything is downloaded)."""
    if not is_s3(uri):
        return uri
    bucket, key = split_s3(uri)
    client = s3_client(settings)
    dest = Path(tmpdir) / uuid.uuid4().hex
    paginator = client.get_paginator("list_objects_v2")
    prefix = key.rstrip("/")
    targets: list[tuple[str, Path]] = []
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            k = obj["Key"]
            if k == prefix:  # one object
                target = _local_target(Path(tmpdir), f"{dest.name}-{Path(k).name}", k, bucket, prefix)
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, k, str(target))
                return str(target)
            if not k.startswith(prefix + "/") or k.endswith("/"):
                continue
            targets.append((k, _local_target(dest, k[len(prefix) + 1 :], k, bucket, prefix)))
    if not targets:
        raise CurationInputError(f"nothing found at {uri}")
    for k, target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, k, str(target))
    return str(dest)


def _local_target(folder: Path, relative: str, key: str, bucket: str, prefix: str) -> Path:
    try:
        return resolve_inside(folder, relative)
    except PathOutsideFolder:
        raise CurationInputError(
            f"S3 key {key!r} under s3://{bucket}/{prefix} would be written outside the local folder {folder}: "
            "refused, nothing downloaded"
        ) from None


class OutputStore:
    """The output folder (local path or S3 prefix); every write is atomic."""

    def __init__(self, uri: str, settings: S3Settings):
        self.uri = uri.rstrip("/")
        self._settings = settings
        self._tmp = tempfile.mkdtemp(prefix="cpt-curate-")
        if is_s3(self.uri):
            self._bucket, prefix = split_s3(self.uri)
            self._prefix = prefix.rstrip("/") + "/" if prefix else ""
            self._client = s3_client(settings)
        else:
            if not Path(self.uri).is_absolute():
                raise CurationInputError(f"output_uri {uri!r} must be an absolute path or s3://")
            Path(self.uri).mkdir(parents=True, exist_ok=True)

    @property
    def is_s3(self) -> bool:
        return is_s3(self.uri)

    def join(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def _local(self, name: str) -> Path:
        return Path(self.uri) / name

    # -- staging: write a local file, then commit it under its final name
    def staging_path(self, name: str) -> Path:
        """A local path to write `name` into before `commit` (next to it, for local outputs)."""
        if self.is_s3:
            path = Path(self._tmp) / f"{uuid.uuid4().hex}-{name.replace('/', '_')}"
        else:
            final = self._local(name)
            final.parent.mkdir(parents=True, exist_ok=True)
            path = final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")
        return path

    def commit(self, name: str, staged: Path) -> None:
        """Publish a fully written staging file under `name` (fsync + rename, or one upload)."""
        if self.is_s3:
            self._client.upload_file(str(staged), self._bucket, self._prefix + name)
            staged.unlink()
            return
        with open(staged, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(staged, self._local(name))

    def write_bytes(self, name: str, data: bytes) -> None:
        staged = self.staging_path(name)
        staged.write_bytes(data)
        self.commit(name, staged)

    # -- reading
    def exists(self, name: str) -> bool:
        if self.is_s3:
            try:
                self._client.head_object(Bucket=self._bucket, Key=self._prefix + name)
                return True
            except Exception:
                return False
        return self._local(name).is_file()

    def read_bytes(self, name: str) -> bytes | None:
        if self.is_s3:
            try:
                return self._client.get_object(Bucket=self._bucket, Key=self._prefix + name)["Body"].read()
            except self._client.exceptions.NoSuchKey:
                return None
        try:
            return self._local(name).read_bytes()
        except FileNotFoundError:
            return None

    def fetch(self, name: str) -> Path:
        """A local path with the content of `name` (downloaded for S3; delete with `release`)."""
        if self.is_s3:
            path = Path(self._tmp) / f"fetch-{uuid.uuid4().hex}"
            self._client.download_file(self._bucket, self._prefix + name, str(path))
            return path
        return self._local(name)

    def release(self, path: Path) -> None:
        if self.is_s3:
            path.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative to the store) that start with `prefix`."""
        if self.is_s3:
            names = []
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._prefix + prefix
            ):
                names.extend(obj["Key"][len(self._prefix) :] for obj in page.get("Contents", []))
            return sorted(names)
        root = Path(self.uri)
        out = []
        for dirpath, _, filenames in os.walk(root):
            for fn in filenames:
                rel = (Path(dirpath) / fn).relative_to(root).as_posix()
                if rel.startswith(prefix):
                    out.append(rel)
        return sorted(out)

    def delete(self, names: list[str]) -> None:
        if self.is_s3:
            for i in range(0, len(names), 1000):
                chunk = names[i : i + 1000]
                if chunk:
                    self._client.delete_objects(
                        Bucket=self._bucket, Delete={"Objects": [{"Key": self._prefix + n} for n in chunk]}
                    )
            return
        for n in names:
            self._local(n).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        """Remove everything under `prefix` (a folder name ending in '/')."""
        if self.is_s3:
            self.delete(self.list(prefix))
        else:
            shutil.rmtree(self._local(prefix), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def iter_stale_temporaries(store: OutputStore) -> Iterator[str]:
    """Temporary files a killed run left in a local output folder."""
    if store.is_s3:
        return iter(())
    return (n for n in store.list("") if TMP_MARK in n.rsplit("/", 1)[-1])
