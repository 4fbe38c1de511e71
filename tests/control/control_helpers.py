"""Helpers for the control-loop tests: a checkpoint folder as the trainer writes it, and the
metrics one pass reads."""

from __future__ import annotations

import json
from pathlib import Path

from cpt_operator.control.prometheus import RunMetrics
from cpt_operator.control.storage import step_dir_name
from cpt_trainer.contract import metrics as names
from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_METRICS_FILE


def write_ckpt(root: Path, step: int, domain: float, regression: float, attempt: int | None = None) -> None:
    """A complete checkpoint folder with its metrics.json (`attempt`: the rollback that wrote it)."""
    folder = root / step_dir_name(step)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECKPOINT_METRICS_FILE).write_text(json.dumps({
        "step": step, "domain_perplexity": domain, "general_scores": {"general-ppl": 10 * (1 + regression)},
        "general_regression": regression, "baseline_domain_perplexity": 30.0,
        **({"attempt": attempt} if attempt is not None else {}),
    }))  # fmt: skip
    (folder / CHECKPOINT_COMPLETE_MARKER).write_text("")


def metrics(step: int, regression: float, now: float) -> RunMetrics:
    """A fresh reading of a run at `step` that evaluated there with `regression`."""
    m = RunMetrics(newest_timestamp=now)
    m.values = {names.STEP.name: step, names.TOKENS_SEEN.name: step * 2_097_152, names.TOKENS_PER_SECOND.name: 500_000.0,
                names.EVAL_STEP.name: step, names.GENERAL_REGRESSION.name: regression, names.DOMAIN_PERPLEXITY.name: 20.0}  # fmt: skip
    m.general_scores = {"general-ppl": 10.5}
    return m
