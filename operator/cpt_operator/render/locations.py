"""Turn API locations into the URIs the trainer sees, and name each run's storage prefix.

A PVC is mounted by the operator at `<pvc_mount_root>/<claimName>` in the trainer pod,
so the trainer only ever sees `s3://...` URIs or absolute paths. Tenant-written parts of
a path (claim names, relative paths, namespaces, run names) are validated by the schema
(DNS-1123 names, no `..`) before they get here; `join_key` re-checks that.
"""

from __future__ import annotations

import posixpath

from cpt_operator.api.common import Location, StorageLocation


def join_key(*parts: str) -> str:
    """Join path/key parts, refusing any part that would escape its parent."""
    clean: list[str] = []
    for part in parts:
        for seg in part.split("/"):
            if seg in ("", "."):
                continue
            if seg == "..":
                raise ValueError(f"path part {part!r} must not contain '..'")
            clean.append(seg)
    return "/".join(clean)


def location_uri(loc: Location | StorageLocation, pvc_mount_root: str) -> str:
    """The URI a trainer pod reads or writes for `loc`."""
    if loc.s3 is not None:
        return loc.s3.uri.rstrip("/")
    if loc.pvc is not None:
        return "/" + join_key(pvc_mount_root, loc.pvc.claim_name, loc.pvc.path)
    local = getattr(loc, "local", None)
    if local is not None:
        return posixpath.normpath(local.path)
    raise ValueError("location has no backend")


def run_prefix(storage: StorageLocation, namespace: str, run: str, pvc_mount_root: str, uid: str = "") -> str:
    """Each run's own checkpoint prefix: <storage>/<namespace>/<run>/<uid> (without a uid, as
    in local mode and for jobs created before the uid was part of it: <storage>/<namespace>/<run>)."""
    base = location_uri(storage, pvc_mount_root)
    return base.rstrip("/") + "/" + join_key(namespace, run, *([uid] if uid else []))


def pvc_claims(*locations: Location | StorageLocation | None) -> list[str]:
    """The PVC claim names these locations need mounted, in order, without repeats."""
    seen: list[str] = []
    for loc in locations:
        if loc is not None and loc.pvc is not None and loc.pvc.claim_name not in seen:
            seen.append(loc.pvc.claim_name)
    return seen
