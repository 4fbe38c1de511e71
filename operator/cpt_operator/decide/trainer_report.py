"""The trainer's termination message, read from the PyTorchJob's master pod (pure).

When a configured evaluation cannot run, rank 0 writes
`{"reason": "EvaluationUnavailable", "eval": NAME, "message": ...}` to its termination message
(`TrainerConfig.termination_message_path`) and exits 2. The message is the tenant's own pod's
output, so it only ever speaks about that run, and is bounded and stripped before it reaches
a condition.
"""

from __future__ import annotations

import json
from typing import Any

MESSAGE_LIMIT = 1024


def evaluation_unavailable(message: str | None) -> tuple[str, str] | None:
    """(eval name, message) when a termination message reports an unavailable evaluation."""
    if not message:
        return None
    try:
        report = json.loads(message)
    except ValueError:
        return None
    if not isinstance(report, dict) or report.get("reason") != "EvaluationUnavailable":
        return None
    name, text = report.get("eval"), report.get("message")
    if not isinstance(name, str) or not isinstance(text, str):
        return None
    return name[:63], " ".join(text.split())[:MESSAGE_LIMIT]


def unavailable_from_pods(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The first report of an unavailable evaluation among the pods' terminated containers."""
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            found = evaluation_unavailable(terminated.get("message"))
            if found is not None:
                return found
    return None
