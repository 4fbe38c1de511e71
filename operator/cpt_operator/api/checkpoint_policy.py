"""The `CheckpointPolicy` kind: how often to save, what to keep, where."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cpt_operator.api.common import CEL, APIModel, Condition, StatusModel, StorageLocation


class CompositeWeights(APIModel):
    """Weights of the composite checkpoint score: domain improvement minus general regression."""

    domain: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the relative domain-perplexity improvement.")
    general: float = Field(1.0, ge=0.0, le=100.0, description="Weight of the relative general regression (subtracted).")

    cel_rules = (CEL("self.domain + self.general > 0.0", "compositeWeights must not both be zero", ".domain"),)


class CheckpointPolicySpec(APIModel):
    """Which checkpoints a run saves and keeps. The kept set is the union of the last N,
    the best K (only checkpoints within the forgetting threshold are eligible) and the
    milestones; the newest complete checkpoint and the current best are never deleted."""

    save_interval: int = Field(500, ge=1, le=10_000_000, description="Optimizer steps between checkpoints.")
    keep_last_n: int = Field(2, ge=1, le=1000, description="Keep the newest N checkpoints.")
    keep_best_k: int = Field(1, ge=0, le=1000, description="Keep the best K checkpoints by bestMetric.")
    best_metric: Literal["composite", "domainPerplexity", "generalScore"] = Field(
        "composite", description="What ranks checkpoints: the composite score, domain perplexity or general score (ranked by the general regression against the baseline, so perplexities and accuracies rank alike)."
    )
    milestone_interval: int = Field(0, ge=0, le=10_000_000, description="Also keep every checkpoint whose step is a multiple of this; 0 disables.")  # noqa: E501
    composite_weights: CompositeWeights = Field(default_factory=CompositeWeights, description="Composite score weights.")
    storage: StorageLocation = Field(description="Where checkpoints go; each run writes below <prefix>/<namespace>/<run>/.")
    delete_with_run: bool = Field(False, description="Delete a run's checkpoints when the CPTRun is deleted.")

    cel_rules = (
        CEL(
            "self.milestoneInterval == 0 || self.milestoneInterval % self.saveInterval == 0",
            "milestoneInterval must be 0 or a multiple of saveInterval",
            ".milestoneInterval",
        ),
    )


class CheckpointPolicyStatus(StatusModel):
    """Observed state of a CheckpointPolicy."""

    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last acted on.")
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Standard conditions.")
    runs: int | None = Field(None, ge=0, description="CPTRuns using this policy.")
