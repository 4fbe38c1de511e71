"""Checkpoint storage as the operator sees it: list complete checkpoints, read their
metrics.json, delete what the policy does not keep.

Deletion is confined to the run's own prefix: a checkpoint URI outside
`<storage>/<namespace>/<run>/`, or not exactly one `step-NNNNNNNN` folder below it, is
refused (`DeletionRefused`), whatever put it in the status.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_METRICS_FILE

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8,})$")
RUN_LEFTOVER = re.compile(r"^(\.tmp-)?step-\d{8,}$")  # what delete_run removes: checkpoints and unfinished saves

MAX_LIST_PAGES = 200
"""Most ListObjectsV2 pages one listing reads (1,000 keys each from S3): an endpoint that says
IsTruncated forever fails that run's listing, it does not keep the control loop busy."""
MAX_LIST_OBJECTS = 100_000
"""Most keys one listing collects."""
MAX_METRICS_BYTES = 1 << 20
"""Largest checkpoint metrics.json read; a bigger one counts as missing."""


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


class DeletionRefused(Exception):
    """A deletion outside the run's own prefix."""


class StorageError(Exception):
    """The store failed (network, permissions); retry later, nothing was decided."""


class ListingTooLarge(StorageError):
    """A listing passed MAX_LIST_PAGES or MAX_LIST_OBJECTS (or repeated a continuation token)."""


class StorageRefused(StorageError):
    """The operator will not reach this storage at all (no credentials it may use, an endpoint
    not on the platform's allowlist): no request is made; retrying cannot help until the
    policy or the operator's settings change."""


class RefusedCheckpointStore:
    """An S3 policy the operator may not reach: every operation raises StorageRefused, before any
    request (so nothing is listed or deleted, and no credentials go anywhere)."""

    deletes_later = False

    def __init__(self, prefix: str, reason: str):
        self.prefix = prefix.rstrip("/")
        self.reason = reason

    def _refuse(self) -> StorageRefused:
        return StorageRefused(f"storage access refused: {self.reason}")

    def list_complete(self) -> list[StoredCheckpoint]:
        raise self._refuse()

    def read_metrics(self, step: int) -> dict[str, Any] | None:
        raise self._refuse()

    def delete(self, uri: str) -> None:
        raise self._refuse()

    def delete_run(self) -> int:
        raise self._refuse()


@dataclass(frozen=True)
class StoredCheckpoint:
    step: int
    uri: str


class CheckpointStore(Protocol):
    """One run's checkpoints below `prefix` = <storage>/<namespace>/<run>.

    `deletes_later` is True for a store whose deletions are carried out by someone else
    (a volume: the trainer applies the retain list), so a checkpoint still listed after its
    deletion was decided is pending, not back."""

    prefix: str
    deletes_later: bool

    def list_complete(self) -> list[StoredCheckpoint]: ...
    def read_metrics(self, step: int) -> dict[str, Any] | None: ...
    def delete(self, uri: str) -> None: ...
    def delete_run(self) -> int: ...


def parse_metrics(body: bytes | str, where: str) -> dict[str, Any] | None:
    """A checkpoint's metrics.json; an unreadable one counts as missing (the checkpoint stays
    listed, without scores), so one corrupt file cannot stop every later pass."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        logger.warning("ignoring unreadable %s: %s", where, exc)
        return None
    return data if isinstance(data, dict) else None


def _split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key.strip("/")


def confined_step(prefix_uri: str, uri: str) -> int:
    """The step of `uri` when it is exactly `<prefix>/step-N`; else DeletionRefused."""
    prefix = prefix_uri.rstrip("/") + "/"
    if not uri.startswith(prefix):
        raise DeletionRefused(f"checkpoint {uri!r} is outside the run's prefix {prefix!r}")
    rest = uri[len(prefix) :].rstrip("/")
    match = STEP_DIR.match(rest)
    if not match:
        raise DeletionRefused(f"checkpoint {uri!r} is not one step-NNNNNNNN folder below {prefix!r}")
    return int(match.group(1))


class S3CheckpointStore:
    """A run's checkpoints under s3://bucket/<prefix>/<namespace>/<run>/step-NNNNNNNN/."""

    deletes_later = False

    def __init__(self, prefix_uri: str, client: Any, max_pages: int = MAX_LIST_PAGES, max_objects: int = MAX_LIST_OBJECTS,
                 max_metrics_bytes: int = MAX_METRICS_BYTES):  # fmt: skip
        self.prefix = prefix_uri.rstrip("/")
        self.bucket, self.key_prefix = _split_s3(self.prefix)
        if not self.key_prefix:
            raise ValueError(f"a run's prefix must lie below the bucket: {prefix_uri!r}")
        self.client = client
        self.max_pages, self.max_objects, self.max_metrics_bytes = max_pages, max_objects, max_metrics_bytes

    def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"S3 {method} on {self.bucket} failed: {exc}") from None

    def _keys(self, prefix: str) -> list[str]:
        """Every key below `prefix` (which ends in "/"), bounded: at most max_pages pages and
        max_objects keys, else ListingTooLarge (nothing is decided on a partial listing)."""
        keys: list[str] = []
        token = None
        seen_tokens: set[str] = set()
        for _ in range(self.max_pages):
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            # A server's answer is not trusted to honour the prefix.
            keys += [k for k in (o.get("Key", "") for o in page.get("Contents", [])) if k.startswith(prefix)]
            if len(keys) > self.max_objects:
                raise ListingTooLarge(f"listing s3://{self.bucket}/{prefix} passed {self.max_objects} objects; nothing was decided")
            if not page.get("IsTruncated"):
                return keys
            token = page.get("NextContinuationToken")
            if not token or token in seen_tokens:
                raise ListingTooLarge(f"listing s3://{self.bucket}/{prefix}: the server repeated or omitted its continuation token")
            seen_tokens.add(token)
        raise ListingTooLarge(f"listing s3://{self.bucket}/{prefix} passed {self.max_pages} pages; nothing was decided")

    def list_complete(self) -> list[StoredCheckpoint]:
        out = []
        for key in self._keys(self.key_prefix + "/"):
            rest = key[len(self.key_prefix) + 1 :]
            folder, _, name = rest.partition("/")
            match = STEP_DIR.match(folder)
            if match and name == CHECKPOINT_COMPLETE_MARKER:
                out.append(StoredCheckpoint(int(match.group(1)), f"{self.prefix}/{folder}"))
        return sorted(out, key=lambda c: c.step)

    def read_metrics(self, step: int) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = f"{self.key_prefix}/{step_dir_name(step)}/{CHECKPOINT_METRICS_FILE}"
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes=0-{self.max_metrics_bytes}")
            body = answer["Body"].read(self.max_metrics_bytes + 1)
            answer["Body"].close()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StorageError(f"S3 get_object {key} failed: {exc}") from None
        except BotoCoreError as exc:  # connection reset, timeout, a broken response stream
            raise StorageError(f"S3 get_object {key} failed: {exc}") from None
        if len(body) > self.max_metrics_bytes:
            logger.warning("ignoring s3://%s/%s: larger than %d bytes", self.bucket, key, self.max_metrics_bytes)
            return None
        return parse_metrics(body, f"s3://{self.bucket}/{key}")

    def _delete_keys(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            result = self._call("delete_objects", Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if result.get("Errors"):
                raise StorageError(f"S3 delete_objects failed for {len(result['Errors'])} key(s): {result['Errors'][0]}")

    def delete(self, uri: str) -> None:
        step = confined_step(self.prefix, uri)
        folder = f"{self.key_prefix}/{step_dir_name(step)}/"
        keys = self._keys(folder)
        # The COMPLETE marker goes first: a half-deleted checkpoint must never look complete.
        marker = folder + CHECKPOINT_COMPLETE_MARKER
        if marker in keys:
            self._delete_keys([marker])
            keys.remove(marker)
        self._delete_keys(keys)

    def delete_run(self) -> int:
        """Delete the run's checkpoints: the keys in direct `step-NNNNNNNN/` (or `.tmp-step-`)
        children of `<prefix>/<namespace>/<run>/`, nothing else below or beside it."""
        base = self.key_prefix + "/"
        keys = [k for k in self._keys(base) if "/" in k[len(base) :] and RUN_LEFTOVER.match(k[len(base) :].split("/", 1)[0])]
        self._delete_keys(keys)
        return len(keys)


class LocalCheckpointStore:
    """Checkpoints in a folder (local mode; a PVC as the trainer pod sees it)."""

    deletes_later = False

    def __init__(self, prefix: str | Path):
        self.prefix = str(Path(prefix))

    def list_complete(self) -> list[StoredCheckpoint]:
        root = Path(self.prefix)
        if not root.is_dir():
            return []
        out = []
        for child in root.iterdir():
            match = STEP_DIR.match(child.name)
            if match and (child / CHECKPOINT_COMPLETE_MARKER).is_file():
                out.append(StoredCheckpoint(int(match.group(1)), str(child)))
        return sorted(out, key=lambda c: c.step)

    def read_metrics(self, step: int) -> dict[str, Any] | None:
        path = Path(self.prefix) / step_dir_name(step) / CHECKPOINT_METRICS_FILE
        if not path.is_file():
            return None
        with path.open("rb") as fh:
            body = fh.read(MAX_METRICS_BYTES + 1)
        if len(body) > MAX_METRICS_BYTES:
            logger.warning("ignoring %s: larger than %d bytes", path, MAX_METRICS_BYTES)
            return None
        return parse_metrics(body, str(path))

    def delete(self, uri: str) -> None:
        step = confined_step(self.prefix, uri)
        folder = Path(self.prefix) / step_dir_name(step)
        (folder / CHECKPOINT_COMPLETE_MARKER).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    def delete_run(self) -> int:
        entries = self.list_complete()
        shutil.rmtree(self.prefix, ignore_errors=True)
        return len(entries)


class VolumeCheckpointStore:
    """A PVC's checkpoints as the operator sees them: listed by the trainer's metrics
    (`cpt_checkpoint_present{step}` with each checkpoint's metrics.json values), deleted by
    the trainer, which applies the retain list the operator writes (`retain_list`).

    `delete` only records the decision (after the same prefix confinement as the other
    stores); nothing here touches the volume.
    """

    deletes_later = True

    def __init__(self, prefix: str, listed: dict[int, dict[str, Any]], baseline_domain_perplexity: float | None = None):
        self.prefix = prefix.rstrip("/")
        self.listed = dict(listed)
        self.baseline_domain_perplexity = baseline_domain_perplexity
        self.released: list[int] = []

    def list_complete(self) -> list[StoredCheckpoint]:
        return [StoredCheckpoint(step, f"{self.prefix}/{step_dir_name(step)}") for step in sorted(self.listed)]

    def read_metrics(self, step: int) -> dict[str, Any] | None:
        entry = self.listed.get(step)
        if entry is None:
            return None
        return {**entry, "baseline_domain_perplexity": self.baseline_domain_perplexity}

    def delete(self, uri: str) -> None:
        self.released.append(confined_step(self.prefix, uri))

    def delete_run(self) -> int:
        raise StorageError("a volume's checkpoints are deleted by a pod that mounts it, not by the operator")


def retain_list(keep_steps: list[int], release_steps: list[int], listed_steps: list[int]) -> dict[str, Any] | None:
    """The trainer's retain file: `{"keep": [...], "decidedThroughStep": N, "delete": [...]}`.

    The trainer deletes the step folders at or before N that `keep` does not name. N is the
    newest step released (recorded, confirmed on two passes, decided deleted; -1 when none), not
    the newest listed: a step the listing missed (a partial answer) lies below N only if it is
    older than a released one. `delete` names exactly the released steps, for a trainer that
    deletes only what is named. None when the trainer listed nothing (just started, or gone):
    no decision to deliver."""
    if not listed_steps:
        return None
    release = sorted(set(release_steps) - set(keep_steps))
    return {
        "keep": [step_dir_name(s) for s in sorted(set(keep_steps))],
        "decidedThroughStep": max(release) if release else -1,
        "delete": [step_dir_name(s) for s in release],
    }
