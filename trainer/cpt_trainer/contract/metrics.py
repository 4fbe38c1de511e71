"""Metric names are part of the API: the trainer exports them, the operator queries them,
the dashboard and alerts are checked against this module. No torch, no kopf here.

Every trainer metric carries the run identity as labels `namespace` and `run`
(`RUN_LABELS`); general-eval metrics add `eval` (the general eval's name).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RUN_LABELS: tuple[str, ...] = ("namespace", "run")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["gauge", "counter", "histogram"]
    help: str
    labels: tuple[str, ...] = RUN_LABELS


# The trainer's metrics (one rank exports them).
STEP = MetricSpec("cpt_step", "gauge", "Optimizer steps completed.")
TOTAL_STEPS = MetricSpec("cpt_total_steps", "gauge", "Optimizer steps the run is configured for.")
TOKENS_SEEN = MetricSpec("cpt_tokens_seen_total", "counter", "Training tokens consumed, all ranks.")
TRAIN_LOSS = MetricSpec("cpt_train_loss", "gauge", "Training loss (mean over the last optimizer step).")
LEARNING_RATE = MetricSpec("cpt_learning_rate", "gauge", "Learning rate of the last optimizer step.")
TOKENS_PER_SECOND = MetricSpec("cpt_tokens_per_second", "gauge", "Training throughput, all ranks, tokens/s.")
MFU = MetricSpec("cpt_mfu_ratio", "gauge", "Model FLOPs utilisation (0-1) against the device's dense peak.")
DOMAIN_PERPLEXITY = MetricSpec("cpt_domain_perplexity", "gauge", "Perplexity on the domain held-out split at the last evaluation.")
GENERAL_SCORE = MetricSpec(
    "cpt_general_score", "gauge",
    "General score at the last evaluation (perplexity: lower is better; benchmark accuracy 0-1: higher is better).",
    RUN_LABELS + ("eval",),
)
GENERAL_SCORE_STDERR = MetricSpec(
    "cpt_general_score_stderr", "gauge", "Standard error of a benchmark's accuracy at the last evaluation.", RUN_LABELS + ("eval",)
)
BASELINE_GENERAL_SCORE = MetricSpec(
    "cpt_baseline_general_score", "gauge", "General score of the base model, measured before the first update.", RUN_LABELS + ("eval",)
)
BASELINE_GENERAL_SCORE_STDERR = MetricSpec(
    "cpt_baseline_general_score_stderr", "gauge",
    "Standard error of the base model's benchmark accuracy (benchmarks only): with cpt_general_score_stderr, the "
    "noise of the drop, sqrt(se^2 + se_baseline^2), that eval.min_standard_errors multiplies.",
    RUN_LABELS + ("eval",),
)
GENERAL_SCORE_HIGHER_IS_BETTER = MetricSpec(
    "cpt_general_score_higher_is_better", "gauge",
    "Direction of each general eval's cpt_general_score: 1 higher is better (benchmark accuracy), 0 lower is better (perplexity).",
    RUN_LABELS + ("eval",),
)
GENERAL_REGRESSION = MetricSpec(
    "cpt_general_regression_ratio",
    "gauge",
    "Relative general regression against the baseline (0.03 = 3 % worse), worst over general evals.",
)
EVAL_STEP = MetricSpec("cpt_eval_step", "gauge", "Step of the last completed evaluation.")
LAST_CHECKPOINT_STEP = MetricSpec("cpt_last_checkpoint_step", "gauge", "Step of the newest complete checkpoint.")
CHECKPOINT_FAILURES = MetricSpec("cpt_checkpoint_upload_failures_total", "counter", "Checkpoint saves or uploads that failed.")
BASELINE_DOMAIN_PERPLEXITY = MetricSpec(
    "cpt_baseline_domain_perplexity", "gauge", "Domain perplexity of the base model, measured before the first update."
)
# The checkpoints on a volume the operator cannot read itself (PVC storage): one series per
# complete checkpoint (label `step`), carrying that checkpoint's own metrics.json values.
# The trainer removes a checkpoint's series when it deletes the checkpoint.
CHECKPOINT_PRESENT = MetricSpec(
    "cpt_checkpoint_present", "gauge", "1 for each complete checkpoint on the run's volume.", RUN_LABELS + ("step",)
)
CHECKPOINT_DOMAIN_PERPLEXITY = MetricSpec(
    "cpt_checkpoint_domain_perplexity", "gauge", "Domain perplexity recorded with the checkpoint.", RUN_LABELS + ("step",)
)
CHECKPOINT_GENERAL_SCORE = MetricSpec(
    "cpt_checkpoint_general_score", "gauge", "General score recorded with the checkpoint.", RUN_LABELS + ("step", "eval")
)
CHECKPOINT_GENERAL_REGRESSION = MetricSpec(
    "cpt_checkpoint_general_regression_ratio", "gauge", "General regression recorded with the checkpoint.", RUN_LABELS + ("step",)
)

CHECKPOINT_ATTEMPT = MetricSpec(
    "cpt_checkpoint_attempt", "gauge", "Rollbacks before the start that wrote the checkpoint (metrics.json `attempt`).",
    RUN_LABELS + ("step",),
)

TRAINER_METRICS: tuple[MetricSpec, ...] = (
    STEP,
    TOTAL_STEPS,
    TOKENS_SEEN,
    TRAIN_LOSS,
    LEARNING_RATE,
    TOKENS_PER_SECOND,
    MFU,
    DOMAIN_PERPLEXITY,
    GENERAL_SCORE,
    GENERAL_SCORE_STDERR,
    BASELINE_GENERAL_SCORE,
    BASELINE_GENERAL_SCORE_STDERR,
    GENERAL_SCORE_HIGHER_IS_BETTER,
    GENERAL_REGRESSION,
    EVAL_STEP,
    LAST_CHECKPOINT_STEP,
    CHECKPOINT_FAILURES,
    BASELINE_DOMAIN_PERPLEXITY,
    CHECKPOINT_PRESENT,
    CHECKPOINT_DOMAIN_PERPLEXITY,
    CHECKPOINT_GENERAL_SCORE,
    CHECKPOINT_GENERAL_REGRESSION,
    CHECKPOINT_ATTEMPT,
)

CHECKPOINT_LISTING: tuple[MetricSpec, ...] = (
    CHECKPOINT_PRESENT, CHECKPOINT_DOMAIN_PERPLEXITY, CHECKPOINT_GENERAL_SCORE, CHECKPOINT_GENERAL_REGRESSION,
    CHECKPOINT_ATTEMPT,
)  # fmt: skip

# The operator's own metrics (no run labels: the operator is one process for all tenants;
# labelled by `kind`/`result` where useful).
OPERATOR_RECONCILES = MetricSpec("cpt_operator_reconciles_total", "counter", "Reconciliations run.", ("kind",))
OPERATOR_ERRORS = MetricSpec("cpt_operator_errors_total", "counter", "Reconciliations that raised.", ("kind",))
OPERATOR_ROTATIONS = MetricSpec("cpt_operator_checkpoint_rotations_total", "counter", "Checkpoint rotations applied.", ())
OPERATOR_DELETIONS = MetricSpec("cpt_operator_checkpoint_deletions_total", "counter", "Checkpoints deleted by policy.", ())
OPERATOR_HALTS = MetricSpec("cpt_operator_halts_total", "counter", "Runs halted for forgetting.", ())
OPERATOR_STATUS_CONFLICTS = MetricSpec(
    "cpt_operator_status_conflicts_total", "counter", "Control-pass status writes refused because the run changed meanwhile.", ()
)
OPERATOR_QUERY_SECONDS = MetricSpec("cpt_operator_query_seconds", "histogram", "Latency of Prometheus queries, seconds.", ())

OPERATOR_METRICS: tuple[MetricSpec, ...] = (
    OPERATOR_RECONCILES,
    OPERATOR_ERRORS,
    OPERATOR_ROTATIONS,
    OPERATOR_DELETIONS,
    OPERATOR_HALTS,
    OPERATOR_STATUS_CONFLICTS,
    OPERATOR_QUERY_SECONDS,
)

ALL_METRIC_NAMES: frozenset[str] = frozenset(m.name for m in TRAINER_METRICS + OPERATOR_METRICS)

# Name of the per-checkpoint metrics file (scores survive a lost scrape or a restart).
CHECKPOINT_METRICS_FILE = "metrics.json"
# The operator's retain list for checkpoints on a volume: a ConfigMap key the trainer pod mounts.
RETAIN_FILE_NAME = "retain.json"
# Marker file written last: a checkpoint folder without it is incomplete and ignored.
CHECKPOINT_COMPLETE_MARKER = "COMPLETE"
