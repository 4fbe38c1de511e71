"""The benchmark task-file contract (no torch: `cpt plan` checks local task files with it).

A task file is a .jsonl (or .json lines) or .parquet file, or a folder holding exactly one,
with one item per row in the `multiple_choice` schema:
`{"question": str, "choices": [str, ...], "answer": int}` (the index of the right choice).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TASK_SUFFIXES = (".jsonl", ".json", ".parquet")


class TaskFileError(ValueError):
    """A task file that cannot be used; the message names the eval and what to fix."""


@dataclass(frozen=True)
class ChoiceItem:
    question: str
    choices: tuple[str, ...]
    answer: int


def find_task_file(path: Path, what: str) -> Path:
    """The task file itself, or the one task file inside a folder; `what` names the eval in errors."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TASK_SUFFIXES)
        if len(files) != 1:
            raise TaskFileError(
                f"{what}: task folder {path} must hold exactly one .jsonl or .parquet file, found {len(files)}"
            )
        return files[0]
    if not path.is_file():
        raise TaskFileError(f"{what}: task file not found: {path}")
    return path


def read_task_file(path: Path, what: str, limit: int) -> list[ChoiceItem]:
    """The first `limit` items of a multiple_choice task file (or of the one file in a folder);
    TaskFileError naming the eval (`what`) and the row on anything wrong."""
    path = find_task_file(path, what)
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        else:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same clear message
        raise TaskFileError(f"{what}: task file {path} cannot be read: {exc}") from None
    items = []
    for i, row in enumerate(rows[:limit]):
        q = row.get("question") if isinstance(row, dict) else None
        choices = row.get("choices") if isinstance(row, dict) else None
        answer = row.get("answer") if isinstance(row, dict) else None
        if (
            not isinstance(q, str) or not isinstance(choices, list) or len(choices) < 2
            or not all(isinstance(c, str) and c for c in choices)
            or isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices)
        ):  # fmt: skip
            raise TaskFileError(
                f"{what}: row {i} of {path} does not match the multiple_choice schema "
                "(question: str, choices: list of >= 2 non-empty str, answer: index into choices)"
            )
        items.append(ChoiceItem(q, tuple(choices), answer))
    if not items:
        raise TaskFileError(f"{what}: task file {path} holds no items")
    return items
