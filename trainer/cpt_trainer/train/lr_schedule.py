"""CPT learning-rate schedules (DESIGN section 1): re-warmup, then cosine to a floor, WSD, or constant.

Updates are numbered n = 1..T (T = total_steps); W = round(warmup_fraction * T), at least 1
when warmup_fraction > 0 (else a short run, e.g. T = 1 with 10 % warmup, would have W = 0 and
spend its only update at min_lr; with W >= 1 the first update after warmup is at the peak).
- warmup (all schedules), n <= W:   lr = peak * n / W
- cosine, n > W:   lr = min + (peak - min) * 0.5 * (1 + cos(pi * (n - W) / (T - W)))
- wsd:     lr = peak until n > T - D (D = max(1, round(decay_fraction * T))), then linear
           to min: lr = peak - (peak - min) * (n - (T - D)) / D
- constant, n > W: lr = peak
So lr(W) = peak, lr(T) = min_lr for cosine and wsd, and the cosine midpoint is (peak + min) / 2.
"""

from __future__ import annotations

import math

from cpt_trainer.contract.config import OptimConfig


def warmup_steps(optim: OptimConfig, total_steps: int) -> int:
    warm = int(round(optim.warmup_fraction * total_steps))
    return max(warm, 1) if optim.warmup_fraction > 0 else warm


def lr_at(update: int, optim: OptimConfig, total_steps: int) -> float:
    """Learning rate of optimizer update number `update` (1-based)."""
    peak, floor = optim.learning_rate, optim.min_learning_rate
    warm = warmup_steps(optim, total_steps)
    n = min(max(update, 1), total_steps)
    if n <= warm:
        return peak * n / warm
    if optim.schedule == "constant":
        return peak
    if optim.schedule == "wsd":
        decay = max(1, int(round(optim.decay_fraction * total_steps)))
        start = max(total_steps - decay, warm)
        if n <= start:
            return peak
        return peak - (peak - floor) * (n - start) / (total_steps - start)
    progress = (n - warm) / (total_steps - warm)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LRSchedule:
    """The LR of the next optimizer update; its state is one counter (updates done)."""

    def __init__(self, optim: OptimConfig, total_steps: int):
        self.optim = optim
        self.total_steps = total_steps
        self.updates_done = 0

    def next_lr(self) -> float:
        return lr_at(self.updates_done + 1, self.optim, self.total_steps)

    def advance(self) -> None:
        """Count one optimizer update (after the engine applied `next_lr()`)."""
        self.updates_done += 1

    def state_dict(self) -> dict:
        return {"updates_done": self.updates_done, "schedule": self.optim.schedule, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.updates_done = int(state["updates_done"])
