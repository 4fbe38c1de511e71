"""The small status JSON (< 4 KiB) the operator reads: the pod's termination message and
`status.json` beside the manifest. Field names follow the Corpus status (snake_case)."""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

MAX_BYTES = 4000  # Kubernetes keeps at most 4096 bytes of a termination message


def stage_list(stages: dict) -> list[dict]:
    """Manifest stages -> [{name, input, removed, modified}] in pipeline order."""
    out = []
    for name, s in stages.items():
        if isinstance(s, dict) and "input" in s:
            out.append({"name": name, "input": int(s["input"]), "removed": int(s.get("removed", 0)),
                        "modified": int(s.get("modified", 0))})  # fmt: skip
    return out


def encode(status: dict) -> str:
    """JSON under MAX_BYTES: the proposed extension, then the PII counts are shortened first."""
    status = dict(status)
    text = json.dumps(status, separators=(",", ":"), sort_keys=True)
    tok = dict(status.get("tokenizer") or {})
    words = list(tok.get("proposed_extension") or [])
    while len(text.encode()) > MAX_BYTES and words:
        words = words[: len(words) // 2] if len(words) > 1 else []
        tok["proposed_extension"] = words
        status["tokenizer"] = tok
        text = json.dumps(status, separators=(",", ":"), sort_keys=True)
    for key in ("pii", "skipped_by_reason", "stages"):
        if len(text.encode()) > MAX_BYTES and key in status:
            status.pop(key)
            text = json.dumps(status, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > MAX_BYTES and "error" in status:
        status["error"] = status["error"][:1000]
        text = json.dumps(status, separators=(",", ":"), sort_keys=True)
    return text


def write_termination_message(path: str, text: str) -> bool:
    """Write the status where Kubernetes picks it up, if that path is writable."""
    try:
        parent = os.path.dirname(path) or "."
        if not os.path.exists(path) and not os.access(parent, os.W_OK):
            return False
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return True
    except OSError as exc:
        log.debug("termination message not written to %s: %s", path, exc)
        return False
