"""Held-out evaluation: domain perplexity, general scores and the forgetting measure.

Perplexity = exp(mean next-token loss) over the first `max_batches` micro-batches of
fixed-length chunks of a corpus's eval split (the same sequences every time). The default
general score is each replay corpus's eval perplexity (lower is better); a configured
benchmark (`benchmarks.py`, accuracy through lm-evaluation-harness, higher is better) is
scored with its standard error. Regression of one general eval = (score - baseline) /
baseline when lower is better, (baseline - score) / baseline when higher is better; the run's
is the worst one. The stderr rule: a benchmark's drop that is not larger than
`min_standard_errors` x sqrt(se^2 + se_baseline^2) is indistinguishable from noise and counts
as 0 (an improvement keeps its negative value), so one noisy point does not cross the threshold.
Both scores are independent estimates (the baseline once, the current one now), so the noise of
their difference is the root sum of squares of the two standard errors. A benchmark point whose
stderr (or its baseline's) is missing or not finite falls back to the threshold alone (k = 0) for
that point, with one warning per eval: a NaN must never disable the gate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from cpt_trainer.train.benchmarks import Benchmark, LogitsFn
from cpt_trainer.train.distributed import DistEnv, all_reduce_sum
from cpt_trainer.train.shards import TokenStream

logger = logging.getLogger(__name__)

# (input_ids of one micro-batch) -> mean next-token loss over it, as a 0-dim tensor.
LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PerplexitySet:
    """Fixed eval sequences of one corpus, shape (n, length)."""

    name: str
    sequences: np.ndarray


def eval_sequences(stream: TokenStream, sequence_length: int, limit: int) -> np.ndarray:
    """Up to `limit` consecutive chunks of the stream; one shorter chunk when it holds less than one."""
    count = min(len(stream) // sequence_length, limit)
    if count == 0:
        if len(stream) < 2:
            raise ValueError(f"eval split holds {len(stream)} tokens: nothing to score")
        return stream.read(0, len(stream))[None, :]
    return np.stack([stream.read(i * sequence_length, sequence_length) for i in range(count)])


@torch.no_grad()
def loss_sum(loss_fn: LossFn, sequences: np.ndarray, micro_batch: int, dist: DistEnv, device: torch.device) -> tuple[float, float]:
    """(sum of token losses, number of predicted tokens) over `sequences`, work split over ranks.

    Every rank runs the same number of forward passes (ZeRO-3 gathers parameters
    collectively); a rank with no batch left repeats batch 0 with weight 0."""
    batches = [sequences[i : i + micro_batch] for i in range(0, len(sequences), micro_batch)]
    per_rank = math.ceil(len(batches) / dist.world_size)
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for k in range(per_rank):
        index = k * dist.world_size + dist.rank
        batch = batches[index] if index < len(batches) else batches[0]
        ids = torch.from_numpy(batch).to(device)
        loss = loss_fn(ids).double()
        if index < len(batches):
            predicted = ids.shape[0] * (ids.shape[1] - 1)
            total[0] += loss * predicted
            total[1] += predicted
    all_reduce_sum(total)
    return float(total[0]), float(total[1])


@dataclass
class EvalResult:
    step: int
    domain_perplexity: float | None
    general: dict[str, float] = field(default_factory=dict)
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)  # benchmarks only

    def to_dict(self) -> dict:
        return {"step": self.step, "domain_perplexity": self.domain_perplexity, "general": dict(self.general),
                "stderr": dict(self.stderr)}


_WARNED_NO_STDERR: set[str] = set()  # evals already warned about (once each per process)


def _finite(value: float | None) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def general_regression(result: EvalResult, baseline: EvalResult | None, min_standard_errors: float = 0.0) -> float | None:
    """Worst relative regression of the general evals against the baseline (None: nothing to
    compare), with the stderr rule of the module docstring for evals that report a stderr."""
    if baseline is None:
        return None
    worst = None
    for name, score in result.general.items():
        base = baseline.general.get(name)
        if base is None or base == 0 or not math.isfinite(score):
            continue
        drop = base - score if result.higher_is_better.get(name) else score - base
        value = drop / base
        se, se_base = result.stderr.get(name), baseline.stderr.get(name)
        benchmark = name in result.stderr or name in baseline.stderr or bool(result.higher_is_better.get(name))
        if value > 0 and min_standard_errors > 0 and benchmark:
            if _finite(se) and _finite(se_base):
                if drop <= min_standard_errors * math.sqrt(se**2 + se_base**2):  # type: ignore[operator]
                    value = 0.0
            elif name not in _WARNED_NO_STDERR:
                _WARNED_NO_STDERR.add(name)
                logger.warning("general eval %s: stderr %s (baseline %s) is missing or not finite: the threshold alone "
                               "decides its regression (min_standard_errors not applied)", name, se, se_base)
        worst = value if worst is None else max(worst, value)
    return worst


class Evaluator:
    """Runs every configured evaluation for one model."""

    def __init__(
        self,
        domain: Sequence[PerplexitySet],
        general: Sequence[PerplexitySet],
        benchmarks: Sequence[Benchmark],
        micro_batch: int,
        dist: DistEnv,
        device: torch.device,
        max_length: int = 2048,
    ):
        self.domain = list(domain)
        self.general = list(general)
        self.benchmarks = list(benchmarks)
        self.micro_batch = micro_batch
        self.dist = dist
        self.device = device
        self.max_length = max_length

    def evaluate(self, step: int, loss_fn: LossFn, logits_fn: LogitsFn | None = None, tokenizer=None) -> EvalResult:
        result = EvalResult(step=step, domain_perplexity=None)
        if self.domain:
            loss, count = 0.0, 0.0
            for s in self.domain:
                part_loss, part_count = loss_sum(loss_fn, s.sequences, self.micro_batch, self.dist, self.device)
                loss, count = loss + part_loss, count + part_count
            result.domain_perplexity = math.exp(loss / count)
        for s in self.general:
            part_loss, part_count = loss_sum(loss_fn, s.sequences, self.micro_batch, self.dist, self.device)
            result.general[s.name] = math.exp(part_loss / part_count)
            result.higher_is_better[s.name] = False
        for b in self.benchmarks:
            if logits_fn is None or tokenizer is None:
                raise ValueError(f"benchmark {b.name} needs the model's logits and the tokenizer")
            score = b.score(logits_fn, tokenizer, self.device, self.max_length)
            result.general[b.name] = score.accuracy
            result.higher_is_better[b.name] = True
            result.stderr[b.name] = score.stderr
        return result

