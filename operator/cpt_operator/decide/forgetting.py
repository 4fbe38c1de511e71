"""The forgetting monitor's decision (pure).

An evaluation counts as forgetting when its relative general regression against the
baseline exceeds the threshold. The monitor acts only after `patience` consecutive
evaluations over the threshold — never on one noisy point, and never on missing data:
evaluations without a regression value are skipped (they neither count nor reset).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalPoint:
    step: int
    general_regression: float | None


@dataclass(frozen=True)
class ForgettingDecision:
    exceeded: bool
    streak: int
    step: int | None = None
    regression: float | None = None

    def message(self, threshold: float, patience: int) -> str:
        if not self.exceeded or self.regression is None:
            return f"general regression within {threshold:.1%} ({self.streak} of {patience} evaluations over it)"
        return (
            f"general regression {self.regression:.2%} exceeds the {threshold:.1%} threshold for {self.streak} "
            f"consecutive evaluations (patience {patience}), last at step {self.step}"
        )


def decide_forgetting(evals: list[EvalPoint], threshold: float, patience: int) -> ForgettingDecision:
    """Whether the newest `patience` evaluations with data all exceed `threshold`.

    The baseline (step 0, before the first update) never counts.
    """
    points = sorted((e for e in evals if e.step > 0 and e.general_regression is not None), key=lambda e: e.step)
    streak = 0
    for point in reversed(points):
        if point.general_regression > threshold:  # type: ignore[operator]
            streak += 1
        else:
            break
    if streak >= patience:
        last = points[-1]
        return ForgettingDecision(True, streak, last.step, last.general_regression)
    return ForgettingDecision(False, streak, points[-1].step if points else None, points[-1].general_regression if points else None)
