"""Which checkpoints a CheckpointPolicy keeps (pure functions).

The kept set is the union of: the newest complete checkpoint (always), the last N, the best
K by the policy's metric (only checkpoints within the forgetting threshold are eligible),
and milestones (steps that are multiples of the milestone interval). The single best
eligible checkpoint is the run's result and is always kept.

Scores: perplexities are lower-is-better; the composite score is higher-is-better:
    composite = w_domain x (ppl_domain_base - ppl_domain) / ppl_domain_base
              - w_general x max(0, general_regression)
`generalScore` ranks by the general regression (lower is better): it is direction-aware and
relative to the baseline, so perplexities (lower is better) and benchmark accuracies (higher is
better) rank alike; a raw score could not be compared across the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Reason = Literal["newest", "lastN", "bestK", "milestone", "best"]
BestMetric = Literal["composite", "domainPerplexity", "generalScore"]


@dataclass(frozen=True)
class EvaluatedCheckpoint:
    """A complete checkpoint and the evaluation recorded with it (None: not evaluated)."""

    step: int
    uri: str
    domain_perplexity: float | None = None
    general_score: float | None = None
    general_regression: float | None = None


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last_n: int
    keep_best_k: int
    best_metric: BestMetric = "composite"
    milestone_interval: int = 0
    weight_domain: float = 1.0
    weight_general: float = 1.0


@dataclass(frozen=True)
class RetentionDecision:
    keep: dict[int, list[Reason]] = field(default_factory=dict)
    delete: list[int] = field(default_factory=list)
    best: int | None = None


def composite_score(ckpt: EvaluatedCheckpoint, baseline_domain_perplexity: float | None, policy: RetentionPolicy) -> float | None:
    """Higher is better; None when the checkpoint lacks the scores it needs."""
    if ckpt.domain_perplexity is None or ckpt.general_regression is None or not baseline_domain_perplexity:
        return None
    improvement = (baseline_domain_perplexity - ckpt.domain_perplexity) / baseline_domain_perplexity
    return policy.weight_domain * improvement - policy.weight_general * max(0.0, ckpt.general_regression)


def ranking_value(ckpt: EvaluatedCheckpoint, baseline_domain_perplexity: float | None, policy: RetentionPolicy) -> float | None:
    """A value where higher is better, for the policy's metric."""
    if policy.best_metric == "composite":
        return composite_score(ckpt, baseline_domain_perplexity, policy)
    value = ckpt.domain_perplexity if policy.best_metric == "domainPerplexity" else ckpt.general_regression
    return None if value is None else -value


def eligible(ckpt: EvaluatedCheckpoint, forgetting_threshold: float) -> bool:
    """Within the regression threshold (and evaluated at all)."""
    return ckpt.general_regression is not None and ckpt.general_regression <= forgetting_threshold


def best_checkpoints(
    ckpts: list[EvaluatedCheckpoint], policy: RetentionPolicy, forgetting_threshold: float, baseline_domain_perplexity: float | None, k: int
) -> list[EvaluatedCheckpoint]:
    """The k best eligible checkpoints, best first; ties go to the earlier step."""
    scored = [
        (value, c)
        for c in ckpts
        if eligible(c, forgetting_threshold) and (value := ranking_value(c, baseline_domain_perplexity, policy)) is not None
    ]
    scored.sort(key=lambda vc: (-vc[0], vc[1].step))
    return [c for _, c in scored[:k]]


def select_checkpoints_to_keep(
    ckpts: list[EvaluatedCheckpoint],
    policy: RetentionPolicy,
    forgetting_threshold: float,
    baseline_domain_perplexity: float | None,
) -> RetentionDecision:
    """The checkpoints to keep (with every reason) and to delete, and the best one."""
    if not ckpts:
        return RetentionDecision()
    by_step = {c.step: c for c in ckpts}
    steps = sorted(by_step)
    keep: dict[int, list[Reason]] = {}

    def add(step: int, reason: Reason) -> None:
        keep.setdefault(step, [])
        if reason not in keep[step]:
            keep[step].append(reason)

    add(steps[-1], "newest")
    for step in steps[-policy.keep_last_n :]:
        add(step, "lastN")
    ranked = best_checkpoints(ckpts, policy, forgetting_threshold, baseline_domain_perplexity, max(policy.keep_best_k, 1))
    for c in ranked[: policy.keep_best_k]:
        add(c.step, "bestK")
    best = ranked[0].step if ranked else None
    if best is not None:
        add(best, "best")
    if policy.milestone_interval > 0:
        for step in steps:
            if step > 0 and step % policy.milestone_interval == 0:
                add(step, "milestone")
    delete = [s for s in steps if s not in keep]
    return RetentionDecision(keep=dict(sorted(keep.items())), delete=delete, best=best)
