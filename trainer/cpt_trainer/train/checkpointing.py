"""The checkpoint manager: interval, atomic writes, resume, and the operator's retain list.

A checkpoint is a folder `step-00000100/` holding `model/` (a loadable transformers folder
with the tokenizer), the optimizer (`optimizer.pt`, or DeepSpeed's `engine/` shards),
`scheduler.json`, `data_position.json`, `trainer_state.json`, `rng/rank-00000.pt` per
rank, `metrics.json` (that step's evaluation) and `COMPLETE`, written last.

Local storage (a PVC path): written as `.tmp-step-00000100/`, `COMPLETE` inside it, then
renamed, so a `step-*` folder is whole or the leftover of an older crash (no `COMPLETE`):
either way resume only trusts folders with `COMPLETE`. S3: written to a local staging
folder, uploaded file by file (multipart), `COMPLETE` uploaded last.

Rollback (`checkpoint.resume_step: S`, the operator's forgetting action): resume from the
complete checkpoint of exactly step S instead of the newest one. Every checkpoint of a later
step in this prefix, complete or not, belongs to the abandoned branch and is deleted before
training starts (its `COMPLETE` first, then the rest, only `<uri>/step-NNNNNNNN/` of steps
after S), so a restart can never pick the old branch's newer checkpoint, nor a later save of
the same step mix old and new files. Rank 0 deletes, then every rank resumes from S.
The rollback is done once, recorded level-based in the prefix: after deleting, rank 0 writes
`rollback-SSSSSSSS-attempt-AAA.json` (`{"resume_step": S, "checkpoint": "step-SSSSSSSS",
"removed": [...]}`; AAA = `TrainerConfig.attempt`, the rollback's number) next to the step
folders. A start whose `resume_step` and attempt already have that marker resumes from
the newest complete checkpoint like any restart (so the new branch's checkpoints after S
survive a restart with the same config). A crash during the deletion leaves no marker: the
next start deletes again (what is left) and resumes from S. A rollback to an earlier step
also deletes the markers of later steps (they belong to the abandoned branch too). A second
rollback to the same step S is a new attempt number, so a new marker: it is done again. No
complete checkpoint of step S and no marker: TrainerInputError naming the complete steps.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from cpt_trainer.contract.config import CheckpointConfig, S3Settings
from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_METRICS_FILE
from cpt_trainer.train.distributed import DistEnv, barrier
from cpt_trainer.train.errors import TrainerInputError
from cpt_trainer.train.s3_staging import S3Store, is_s3, join_s3

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})$")
_ROLLBACK = re.compile(r"^rollback-(\d{8})(?:-attempt-\d+)?\.json$")
TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoint_step(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def rollback_marker_name(step: int, attempt: int = 0) -> str:
    """The file (in the checkpoint prefix) recording that rollback `attempt` (to `step`) was done."""
    return f"rollback-{step:08d}-attempt-{attempt:03d}.json"


def rollback_marker_step(name: str) -> int | None:
    match = _ROLLBACK.match(name)
    return int(match.group(1)) if match else None


def _write_json(path: Path, data: dict) -> None:
    with path.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    """Callers ask `should_save(step)`, call `save(step, write, metrics)`, and on start `latest()` / `fetch(name)`."""

    def __init__(self, cfg: CheckpointConfig, s3: S3Settings, cache_dir: Path, dist: DistEnv, total_steps: int,
                 attempt: int = 0):
        self.cfg = cfg
        self.attempt = attempt  # TrainerConfig.attempt: which rollback this start is (marker names)
        self.dist = dist
        self.total_steps = total_steps
        self.remote = is_s3(cfg.uri)
        self.store = S3Store(s3) if self.remote else None
        self.root = cache_dir / "checkpoint-staging" if self.remote else Path(cfg.uri)
        if dist.is_local_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self._remove_leftover_temporaries()
        barrier()

    def _remove_leftover_temporaries(self) -> None:
        for path in self.root.glob(TMP_PREFIX + "*"):
            logger.warning("removing the unfinished checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)

    def should_save(self, step: int) -> bool:
        return step > 0 and (step % self.cfg.interval == 0 or step == self.total_steps)

    # ------------------------------------------------------------------ listing and resume

    def complete_local(self) -> list[str]:
        names = []
        for path in self.root.iterdir():
            if checkpoint_step(path.name) is None or not path.is_dir():
                continue
            if (path / CHECKPOINT_COMPLETE_MARKER).is_file():
                names.append(path.name)
            else:
                logger.warning("ignoring incomplete checkpoint %s (no %s)", path, CHECKPOINT_COMPLETE_MARKER)
        return sorted(names, key=checkpoint_step)

    def complete_remote(self) -> list[str]:
        assert self.store is not None
        names = []
        for name in self.store.list_folders(self.cfg.uri):
            if checkpoint_step(name) is None:
                continue
            if self.store.exists(join_s3(self.cfg.uri, name, CHECKPOINT_COMPLETE_MARKER)):
                names.append(name)
            else:
                logger.warning("ignoring incomplete checkpoint %s/%s (no %s)", self.cfg.uri, name, CHECKPOINT_COMPLETE_MARKER)
        return sorted(names, key=checkpoint_step)

    def latest(self) -> str | None:
        """Name of the newest complete checkpoint, or None."""
        names = self.complete()
        return names[-1] if names else None

    def complete(self) -> list[str]:
        """Names of the complete checkpoints, oldest first."""
        return self.complete_remote() if self.remote else self.complete_local()

    def resume_target(self) -> str | None:
        """The checkpoint this start resumes from (None: a fresh start). Without
        `resume_step`: the newest complete one. With it: the rollback of the module docstring
        (deletes the later steps on rank 0 the first time). Every rank calls it."""
        step = self.cfg.resume_step
        if step is None:
            return self.latest()
        target, marker = checkpoint_name(step), rollback_marker_name(step, self.attempt)
        if self._marker_exists(marker):
            latest = self.latest()
            logger.info("rollback to %s already done (%s): resuming from the newest checkpoint %s", target, marker, latest)
            return latest
        complete = self.complete()
        if target not in complete:
            steps = ", ".join(str(checkpoint_step(n)) for n in complete) or "none"
            raise TrainerInputError(
                f"checkpoint.resume_step {step}: no complete checkpoint {target} in {self.cfg.uri} (complete steps: {steps})"
            )
        barrier()  # every rank has looked at the marker before rank 0 writes it
        if self.dist.is_main:
            removed = self._remove_after(step)
            self._write_marker(marker, {"resume_step": step, "checkpoint": target, "removed": removed})
            logger.info("rollback to %s: removed the abandoned branch's checkpoints %s", target,
                        ", ".join(removed) if removed else "(none after it)")
        barrier()
        return target

    def _marker_exists(self, marker: str) -> bool:
        if self.remote:
            assert self.store is not None
            return self.store.exists(join_s3(self.cfg.uri, marker))
        return (self.root / marker).is_file()

    def _write_marker(self, marker: str, data: dict) -> None:
        if self.remote:
            assert self.store is not None
            self.store.put_bytes(join_s3(self.cfg.uri, marker), json.dumps(data, indent=2, sort_keys=True).encode())
            return
        part = self.root / f".{marker}.part"
        _write_json(part, data)
        os.replace(part, self.root / marker)
        _fsync_dir(self.root)

    def _remove_after(self, step: int) -> list[str]:
        """Delete every checkpoint (complete or not) and rollback marker of a step after `step`
        in this prefix, `COMPLETE` first; returns the checkpoint names, oldest first."""
        if self.remote:
            return self._remove_after_remote(step)
        names = sorted((p.name for p in self.root.iterdir()
                        if p.is_dir() and (checkpoint_step(p.name) or 0) > step), key=checkpoint_step)
        for name in names:
            (self.root / name / CHECKPOINT_COMPLETE_MARKER).unlink(missing_ok=True)  # never half-deleted yet complete
        if names:
            _fsync_dir(self.root)
        for name in names:
            shutil.rmtree(self.root / name)
        for path in self.root.glob("rollback-*.json"):
            if (rollback_marker_step(path.name) or 0) > step:
                path.unlink(missing_ok=True)
        return names

    def _remove_after_remote(self, step: int) -> list[str]:
        assert self.store is not None
        names = sorted((n for n in self.store.list_folders(self.cfg.uri) if (checkpoint_step(n) or 0) > step),
                       key=checkpoint_step)
        for name in names:
            self.store.delete_object(join_s3(self.cfg.uri, name, CHECKPOINT_COMPLETE_MARKER))
        for name in names:
            self.store.delete_folder(join_s3(self.cfg.uri, name))  # only keys below <uri>/step-NNNNNNNN/
        for file in self.store.list_files(self.cfg.uri):
            if (rollback_marker_step(file) or 0) > step:
                self.store.delete_object(join_s3(self.cfg.uri, file))
        return names

    def fetch(self, name: str) -> Path:
        """A local folder with checkpoint `name` (downloaded once per node from S3)."""
        if not self.remote:
            return self.root / name
        local = self.root.parent / "resume" / name
        if self.dist.is_local_main:
            assert self.store is not None
            shutil.rmtree(local, ignore_errors=True)
            self.store.download_folder(join_s3(self.cfg.uri, name), local)
        barrier()
        return local

    # ------------------------------------------------------------------ saving

    def save(self, step: int, write: Callable[[Path], None], metrics: dict) -> str:
        """Write checkpoint `step`: `write(folder)` runs on every rank, then it is made complete."""
        name = checkpoint_name(step)
        tmp = self.root / (TMP_PREFIX + name)
        if self.dist.is_local_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        write(tmp)
        if self.dist.is_main:
            _write_json(tmp / CHECKPOINT_METRICS_FILE, metrics)
        barrier()
        if self.remote:
            self._upload(name, tmp)
        else:
            if self.dist.is_main:
                _fsync_tree(tmp)
                (tmp / CHECKPOINT_COMPLETE_MARKER).write_text(f"{step}\n", encoding="utf-8")
                final = self.root / name
                if final.exists():  # an older incomplete attempt at the same step
                    shutil.rmtree(final)
                os.rename(tmp, final)
        barrier()
        logger.info("checkpoint %s complete", name)
        return name

    def _upload(self, name: str, tmp: Path) -> None:
        assert self.store is not None
        target = join_s3(self.cfg.uri, name)
        if self.dist.is_main:
            self.store.delete_folder(target)  # leftovers of an earlier incomplete upload
        barrier()
        if self.dist.is_local_main:  # each node uploads what its ranks wrote
            self.store.upload_folder(tmp, target, skip=(CHECKPOINT_COMPLETE_MARKER,))
        barrier()
        if self.dist.is_main:
            self.store.put_bytes(join_s3(target, CHECKPOINT_COMPLETE_MARKER), f"{int(name[5:])}\n".encode())
        if self.dist.is_local_main:
            shutil.rmtree(tmp, ignore_errors=True)

    def apply_retain_list(self) -> list[str]:
        """Delete the volume's checkpoints the operator's retain list lets go; returns their names.

        The list is `{"keep": [names], "decidedThroughStep": N, "delete": [names]}`: only
        checkpoints at or before step N that it does not keep, and that `delete` names (when
        the list has it), are deleted, so a checkpoint saved after the operator's
        decision (the ConfigMap reaches the pod a minute or so late) is never lost, and the
        newest complete checkpoint never goes. An unreadable list deletes nothing."""
        if self.remote or not self.cfg.retain_file or not self.dist.is_main:
            return []
        path = Path(self.cfg.retain_file)
        if not path.is_file():
            return []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            keep = {str(name) for name in data["keep"]}
            through = data.get("decidedThroughStep")
            through = int(through) if through is not None else None
            named = {str(n) for n in data["delete"]} if "delete" in data else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("retain list %s is unreadable (%s): deleting nothing", path, exc)
            return []
        folders = [p.name for p in self.root.iterdir() if p.is_dir()]
        deleted = retain_deletions(folders, self.complete_local(), keep, through, named)
        for name in deleted:
            marker = self.root / name / CHECKPOINT_COMPLETE_MARKER
            marker.unlink(missing_ok=True)  # a half-deleted checkpoint must never look complete
            shutil.rmtree(self.root / name, ignore_errors=True)
        if deleted:
            logger.info("retain list: deleted %d checkpoints (%s)", len(deleted), ", ".join(deleted))
        return deleted


def retain_deletions(folders: list[str], complete: list[str], keep: set[str], through: int | None,
                     named: set[str] | None = None) -> list[str]:  # fmt: skip
    """Which checkpoint folders a retain list deletes: step folders at or before `through`
    (without it: at or before the newest step the list keeps) that it does not keep, never
    the newest complete one. With `named` (the list's `delete`), a complete checkpoint goes
    only when named there: one the operator never saw listed (a partial metrics answer) stays;
    unfinished saves at or before `through` are leftovers and go."""
    newest = max(complete, key=checkpoint_step) if complete else None
    finished = set(complete)
    if through is None:
        kept_steps = [s for name in keep if (s := checkpoint_step(name)) is not None]
        through = max(kept_steps) if kept_steps else -1
    out = []
    for name in folders:
        step = checkpoint_step(name)
        if step is None or name in keep or name == newest or step > through:
            continue
        if named is not None and name in finished and name not in named:
            continue
        out.append(name)
    return sorted(out, key=lambda n: checkpoint_step(n) or 0)
