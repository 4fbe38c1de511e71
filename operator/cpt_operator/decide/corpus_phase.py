"""A Corpus's phase from its curation Job, and its counts from the curation report (pure).

The report is the small JSON the curation pod of index 0 writes to its termination
message (`CurationConfig.termination_message_path`). Keys are read in snake_case or
camelCase; unknown keys are ignored and a malformed report only loses the counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CorpusJobState:
    phase: str  # Curating, Ready, Failed
    message: str


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((x for x in status.get("conditions") or [] if x.get("type") == type_ and x.get("status") == "True"), None)


def corpus_job_state(job_status: dict[str, Any] | None, completions: int) -> CorpusJobState:
    """Curating until the Job's Complete (or every index succeeded); Failed on its Failed condition."""
    status = job_status or {}
    failed = _cond(status, "Failed")
    if failed is not None:
        return CorpusJobState("Failed", failed.get("message") or failed.get("reason") or "the curation Job failed")
    if _cond(status, "Complete") is not None or int(status.get("succeeded") or 0) >= completions > 0:
        return CorpusJobState("Ready", "curation finished")
    active = int(status.get("active") or 0)
    return CorpusJobState("Curating", f"{active} curation pod(s) active, {int(status.get('succeeded') or 0)}/{completions} done")


def _get(d: dict[str, Any], snake: str) -> Any:
    parts = snake.split("_")
    camel = parts[0] + "".join(p.title() for p in parts[1:])
    return d.get(snake, d.get(camel))


def _count(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None


def parse_curation_report(message: str | None) -> dict[str, Any]:
    """CorpusStatus fields (camelCase) from a curation report; {} when absent or malformed."""
    if not message:
        return {}
    try:
        data = json.loads(message)
    except (json.JSONDecodeError, TypeError):
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    for key, wire in (("documents", "documents"), ("tokens", "tokens"), ("shards", "shards")):
        n = _count(_get(data, key))
        if n is not None:
            out[wire] = n
    uri = _get(data, "output_uri")
    if isinstance(uri, str):
        out["outputUri"] = uri
    stages = []
    for stage in _get(data, "stages") or []:
        if isinstance(stage, dict) and isinstance(stage.get("name"), str):
            stages.append(
                {
                    "name": stage["name"],
                    "input": _count(stage.get("input")) or 0,
                    "removed": _count(stage.get("removed")) or 0,
                    "modified": _count(stage.get("modified")) or 0,
                }
            )
    if stages:
        out["stages"] = stages[:16]
    tok = _get(data, "tokenizer")
    if isinstance(tok, dict):
        report: dict[str, Any] = {}
        for key, wire in (("chars_per_token", "charsPerToken"), ("fertility", "fertility")):
            v = _get(tok, key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                report[wire] = float(v)
        ext = _get(tok, "proposed_extension")
        if isinstance(ext, list):
            report["proposedExtension"] = [str(x) for x in ext][:256]
        if report:
            out["tokenizer"] = report
    return out
