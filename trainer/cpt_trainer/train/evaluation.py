"""Held-out evaluation: domain perplexity, general scores and the forgetting measure.

Perplexity = exp(mean next-token loss) over the first `max_batches` micro-batches of
fixed-length chunks of a corpus's eval split (the same sequences every time). The default
general score is each replay corpus's eval perplexity (lower is better); lm-evaluation-harness
tasks (accuracy, higher is better) run only when `lm_eval` is installed and their data is on
local disk. Regression of one general eval = (score - baseline) / baseline when lower is
better, (baseline - score) / baseline when higher is better; the run's is the worst one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

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

    def to_dict(self) -> dict:
        return {"step": self.step, "domain_perplexity": self.domain_perplexity, "general": dict(self.general)}


def general_regression(result: EvalResult, baseline: EvalResult | None) -> float | None:
    """Worst relative regression of the general evals against the baseline (None: nothing to compare)."""
    if baseline is None:
        return None
    worst = None
    for name, score in result.general.items():
        base = baseline.general.get(name)
        if base is None or base == 0 or not math.isfinite(score):
            continue
        value = (base - score) / base if result.higher_is_better.get(name) else (score - base) / base
        worst = value if worst is None else max(worst, value)
    return worst


class Evaluator:
    """Runs every configured evaluation for one model."""

    def __init__(
        self,
        domain: Sequence[PerplexitySet],
        general: Sequence[PerplexitySet],
        lm_eval_tasks: Sequence[tuple[str, str]],
        micro_batch: int,
        dist: DistEnv,
        device: torch.device,
    ):
        self.domain = list(domain)
        self.general = list(general)
        self.lm_eval_tasks = list(lm_eval_tasks)
        self.micro_batch = micro_batch
        self.dist = dist
        self.device = device
        self._lm_eval_available = self._check_lm_eval()

    def _check_lm_eval(self) -> bool:
        if not self.lm_eval_tasks:
            return False
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            logger.info("lm_eval is not installed: skipping general evals %s", [n for n, _ in self.lm_eval_tasks])
            return False
        return True

    def evaluate(self, step: int, loss_fn: LossFn, model=None, tokenizer=None) -> EvalResult:
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
        if self._lm_eval_available and model is not None:
            for name, task in self.lm_eval_tasks:
                score = run_lm_eval_task(model, tokenizer, task, self.micro_batch)
                if score is not None:
                    result.general[name] = score
                    result.higher_is_better[name] = True
        return result


def run_lm_eval_task(model, tokenizer, task: str, batch_size: int) -> float | None:
    """Accuracy of one lm-evaluation-harness task whose data is on local disk (offline); None if it cannot run."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM

        out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), tasks=[task])
        metrics = out["results"][task]
        for key in ("acc_norm,none", "acc,none", "exact_match,none"):
            if key in metrics:
                return float(metrics[key])
        logger.info("lm_eval task %s reported no accuracy metric: skipped", task)
    except Exception as exc:  # noqa: BLE001 - a missing local dataset must not stop training
        logger.info("lm_eval task %s cannot run (%s): skipped", task, exc)
    return None
