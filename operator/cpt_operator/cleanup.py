"""`python -m cpt_operator.cleanup`: delete one run's checkpoints from a mounted volume.

Run by the cleanup Job the operator creates when a CPTRun whose CheckpointPolicy has
`deleteWithRun: true` and PVC storage is deleted (the operator itself cannot mount a
tenant's volume). Arguments arrive as an argv list, never through a shell. The folder must be
exactly `<mount root>/<claim>/.../<namespace>/<run>[/<uid>]` with the namespace, run (and uid) given, below
the mount root, with no `..` or symlink on the way; anything else is refused (exit 2) and
nothing is deleted. Only `step-NNNNNNNN` folders (and their `.tmp-` leftovers) go, each with
its `COMPLETE` marker first; the run's folder is removed when it is then empty.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER

STEP = re.compile(r"^(\.tmp-)?step-\d{8,}$")  # a checkpoint, or the leftover of an unfinished save


class Refused(Exception):
    """The folder is not a run's own checkpoint prefix."""


def confined_run_folder(mount_root: str, folder: str, namespace: str, run: str, uid: str = "") -> Path:
    root = Path(mount_root)
    path = Path(folder)
    if not root.is_absolute() or not path.is_absolute():
        raise Refused("the mount root and the folder must be absolute paths")
    tail = (namespace, run, uid) if uid else (namespace, run)
    if ".." in path.parts or path.parts[-len(tail):] != tail:
        raise Refused(f"{folder!r} is not <storage>/{'/'.join(tail)}")
    if root not in path.parents or len(path.relative_to(root).parts) < 1 + len(tail):
        raise Refused(f"{folder!r} is not below a claim mounted at {mount_root!r}")
    if path.exists() and path.resolve() != path:
        raise Refused(f"{folder!r} goes through a symlink")
    return path


def delete_run_checkpoints(folder: Path) -> int:
    """Delete the step folders below `folder`; returns how many."""
    if not folder.is_dir():
        return 0
    deleted = 0
    for child in sorted(folder.iterdir()):
        if not STEP.match(child.name) or child.is_symlink() or not child.is_dir():
            continue
        (child / CHECKPOINT_COMPLETE_MARKER).unlink(missing_ok=True)  # a half-deleted checkpoint never looks complete
        shutil.rmtree(child)
        deleted += 1
    if not any(folder.iterdir()):
        folder.rmdir()
    return deleted


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cpt_operator.cleanup", description=__doc__.splitlines()[0])
    p.add_argument("--mount-root", required=True)
    p.add_argument("--folder", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--uid", default="", help="the run's uid, the last part of its folder (runs created since it is)")
    p.add_argument("--report", default="/dev/termination-log", help="where the JSON result goes ('' for none)")
    args = p.parse_args(argv)
    try:
        folder = confined_run_folder(args.mount_root, args.folder, args.namespace, args.run, args.uid)
        deleted = delete_run_checkpoints(folder)
    except Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cleanup failed: {exc}", file=sys.stderr)
        return 1
    result = json.dumps({"deleted": deleted, "folder": str(folder)})
    print(result)
    if args.report:
        try:
            Path(args.report).write_text(result)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
