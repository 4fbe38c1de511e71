"""Whether a run's Corpora and CheckpointPolicy are there and Ready (pure).

Lookups are by name in the run's own namespace only: the caller passes what it found
there, so a run can never see another tenant's objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cpt_operator import conditions as c


@dataclass(frozen=True)
class DependencyState:
    ready: bool
    reason: str
    message: str
    phase: str  # the run phase while not ready
    waiting_for: tuple[str, ...] = field(default_factory=tuple)


def decide_dependencies(
    namespace: str,
    corpus_names: list[str],
    corpora: dict[str, dict[str, Any] | None],
    policy_name: str,
    policy: dict[str, Any] | None,
) -> DependencyState:
    """`corpora` maps each needed Corpus to its body in the run's namespace (None: absent)."""
    if policy is None:
        return DependencyState(
            False, c.CHECKPOINT_POLICY_NOT_FOUND,
            f"CheckpointPolicy {policy_name!r} does not exist in namespace {namespace!r}; create it or fix spec.checkpointPolicyRef",
            "Pending",
        )  # fmt: skip
    missing = [n for n in corpus_names if corpora.get(n) is None]
    if missing:
        return DependencyState(
            False, c.CORPUS_NOT_FOUND,
            f"Corpus {', '.join(missing)} does not exist in namespace {namespace!r}; create it or fix spec.corpora",
            "Pending", tuple(missing),
        )  # fmt: skip
    failed = [n for n in corpus_names if ((corpora[n] or {}).get("status") or {}).get("phase") == "Failed"]
    if failed:
        return DependencyState(
            False, c.CORPUS_FAILED, f"Corpus {', '.join(failed)} failed curation; see its conditions", "Pending", tuple(failed)
        )
    waiting = [n for n in corpus_names if ((corpora[n] or {}).get("status") or {}).get("phase") != "Ready"]
    if waiting:
        return DependencyState(
            False, c.WAITING_FOR_CORPUS, f"waiting for Corpus {', '.join(waiting)} to be Ready", "WaitingForCorpus", tuple(waiting)
        )
    return DependencyState(True, c.DEPENDENCIES_RESOLVED, "all corpora are Ready and the CheckpointPolicy exists", "")


def backoff_delay(retry: int, base: float = 5.0, cap: float = 300.0) -> float:
    """Seconds before re-checking something the operator cannot watch (a Secret): doubling, capped."""
    return float(min(cap, base * (2 ** max(0, min(retry, 30)))))
