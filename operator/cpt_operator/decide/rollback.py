"""action Rollback (pure): what a rollback changes and whether one more is allowed.

On a threshold crossing (the forgetting monitor's decision, with patience) a run whose
`evaluation.action` is Rollback restarts from its best eligible checkpoint, with the domain
fraction (`mixing.alpha` and every curriculum point) multiplied by `rollback.alphaFactor` and
the learning rates by `rollback.learningRateFactor`, compounding per attempt. After
`rollback.maxAttempts` rollbacks, or when no eligible checkpoint exists to return to, the run
is halted as with action Halt (its best checkpoint kept).

What the restart implies, and nothing more: the checkpoints written after `fromStep` belong to
the abandoned branch and are removed by the trainer before it resumes (they are never taken
for the new branch's, which carry the new attempt number in metrics.json); the data position,
RNG and schedule continue from `fromStep`'s checkpoint, so the tokens trained on between
`fromStep` and the crossing are drawn again under the new mix (the abandoned branch's updates
are discarded with its weights).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cpt_operator.api.cptrun import CPTRunSpec


@dataclass(frozen=True)
class RunSettings:
    """The settings a start of the run trains with, after `attempt` rollbacks."""

    attempt: int
    alpha: float
    curriculum: tuple[tuple[int, float], ...]
    learning_rate: float
    min_learning_rate: float
    resume_step: int | None


def settings_after(spec: CPTRunSpec, rollbacks: list[dict[str, Any]]) -> RunSettings:
    """The spec's settings with every recorded rollback applied (none: the spec's own)."""
    n = len(rollbacks)
    a = spec.evaluation.rollback.alpha_factor**n
    lr = spec.evaluation.rollback.learning_rate_factor**n
    return RunSettings(
        attempt=n,
        alpha=spec.mixing.alpha * a,
        curriculum=tuple((p.step, p.alpha * a) for p in spec.mixing.curriculum),
        learning_rate=spec.training.learning_rate * lr,
        min_learning_rate=spec.training.min_learning_rate * lr,
        resume_step=int(rollbacks[-1]["fromStep"]) if rollbacks else None,
    )


@dataclass(frozen=True)
class RollbackPlan:
    attempt: int
    from_step: int
    at_step: int | None
    regression: float | None
    alpha: float
    learning_rate: float

    def record(self, now: str) -> dict[str, Any]:
        return {"attempt": self.attempt, "fromStep": self.from_step, "atStep": self.at_step, "regression": self.regression,
                "alpha": round(self.alpha, 6), "learningRate": self.learning_rate, "outcome": "Restarting", "at": now}  # fmt: skip


def plan_rollback(spec: CPTRunSpec, rollbacks: list[dict[str, Any]], best_step: int | None, at_step: int | None,
                  regression: float | None) -> tuple[RollbackPlan | None, str]:
    """The next rollback, or None and why the run is halted instead."""
    cap = spec.evaluation.rollback.max_attempts
    if len(rollbacks) >= cap:
        return None, f"{len(rollbacks)} of {cap} rollbacks used: halted"
    if best_step is None:
        return None, "no eligible checkpoint to roll back to: halted"
    after = settings_after(spec, [*rollbacks, {"fromStep": best_step}])
    plan = RollbackPlan(len(rollbacks) + 1, best_step, at_step, regression, after.alpha, after.learning_rate)
    return plan, (f"rolling back to step {best_step} (attempt {plan.attempt} of {cap}): mixing.alpha {after.alpha:.3g}, "
                  f"learningRate {after.learning_rate:.3g}")  # fmt: skip


def restarting(rollbacks: list[dict[str, Any]]) -> bool:
    """The newest rollback is decided and the job not yet restarted with it."""
    return bool(rollbacks) and rollbacks[-1].get("outcome") == "Restarting"


def abandoned(record_step: int, record_attempt: int | None, rollbacks: list[dict[str, Any]]) -> bool:
    """A checkpoint or evaluation after the newest rollback's fromStep written by an earlier attempt."""
    if not rollbacks:
        return False
    return record_step > int(rollbacks[-1]["fromStep"]) and (record_attempt or 0) < len(rollbacks)
