"""Local paths built from names someone else wrote (S3 keys, corpus names), kept inside their folder.

An S3 key is any string: `a/../../x`, `/x` or `a//x` joined to a local folder as it stands lands
outside it. `resolve_inside` resolves the joined path and refuses one not strictly below the
folder, so a caller checks every key before it writes anything.
"""

from __future__ import annotations

from pathlib import Path


class PathOutsideFolder(ValueError):
    """A relative path that resolves outside the folder it must stay in (or onto the folder itself)."""


def resolve_inside(folder: Path, relative: str) -> Path:
    """`folder / relative` resolved (symlinks and `..` followed); `PathOutsideFolder` unless it
    lies strictly below `folder` (resolved the same way)."""
    try:
        base = Path(folder).resolve()
        target = (base / relative).resolve()
    except (ValueError, OSError) as exc:  # an embedded NUL byte, a symlink loop
        raise PathOutsideFolder(f"{relative!r} is not a usable local path: {exc}") from None
    if target == base or not target.is_relative_to(base):
        raise PathOutsideFolder(f"{relative!r} resolves to {target}, outside {base}")
    return target
