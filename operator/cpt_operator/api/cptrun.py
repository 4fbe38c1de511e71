"""The `CPTRun` kind: one continued-pretraining run."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from cpt_operator.api.common import (
    CEL,
    APIModel,
    Condition,
    LocalObjectReference,
    Location,
    Name,
    Quantity,
    StatusModel,
    Toleration,
)


class BaseModelSpec(APIModel):
    """The pretrained model the run continues from."""

    location: Location = Field(description="Model folder loadable by transformers (config.json and weights).")
    tokenizer: Location | None = Field(None, description="Tokenizer folder; the model's folder when omitted.")
    parameters: int | None = Field(
        None, ge=1, le=10_000_000_000_000,
        description="Parameter count, a hint for planning when the model's config.json is not readable from where `cpt plan` runs.",
    )  # fmt: skip
    hidden_size: int | None = Field(None, ge=1, le=1_000_000, description="Hidden size, a planning hint (activation memory).")
    num_layers: int | None = Field(None, ge=1, le=10_000, description="Transformer layers, a planning hint (activation memory).")


class CorpusRef(APIModel):
    """A Corpus of this namespace used by the run."""

    name: Name = Field(description="Name of a Corpus in the run's own namespace.")
    role: Literal["domain", "replay"] = Field(description="domain: the new data; replay: general data mixed in against forgetting.")
    weight: float = Field(1.0, gt=0.0, le=1_000_000.0, description="Share of this corpus within its role.")


class CurriculumPoint(APIModel):
    """The domain fraction at a step; alpha is interpolated linearly between points."""

    step: int = Field(ge=0, le=100_000_000, description="Optimizer step.")
    alpha: float = Field(ge=0.0, le=1.0, description="Domain fraction of tokens at that step.")


def _check_curriculum_order(points: list[CurriculumPoint]) -> list[CurriculumPoint]:
    for i in range(1, len(points)):
        if points[i].step <= points[i - 1].step:
            raise ValueError(
                f"curriculum[{i}].step {points[i].step} does not come after curriculum[{i - 1}].step {points[i - 1].step}: "
                "list the points in increasing step order, each step once"
            )
    return points


class MixingSpec(APIModel):
    """How domain and replay tokens are mixed (exact, seeded, resumable)."""

    alpha: float = Field(0.7, ge=0.0, le=1.0, description="Domain fraction of training tokens (typical 0.5-0.9).")
    curriculum: Annotated[list[CurriculumPoint], AfterValidator(_check_curriculum_order)] = Field(
        default_factory=list, max_length=64, description="Alpha by step, in increasing step order; overrides alpha when set."
    )

    cel_rules = (
        CEL(
            "!has(self.curriculum) || self.curriculum.all(p, self.curriculum.exists_one(q, q.step == p.step))",
            "curriculum must not list the same step twice",
            ".curriculum",
        ),
    )


class TokenizerExtensionSpec(APIModel):
    """Add frequent, fragmented domain words to the vocabulary; new embeddings start at the mean."""

    enabled: bool = Field(False, description="Extend the vocabulary.")
    tokens: list[Annotated[str, Field(min_length=1, max_length=256, pattern=r"\S")]] = Field(
        default_factory=list, max_length=4096, description="Tokens to add (not empty, not only whitespace)."
    )
    from_corpus: Name | None = Field(None, description="Also add the proposed extension of this Corpus (a domain corpus of the run).")

    cel_rules = (
        CEL(
            "!self.enabled || size(self.tokens) > 0 || has(self.fromCorpus)",
            "tokens or fromCorpus is required when tokenizerExtension is enabled",
            ".tokens",
        ),
    )


class TrainingSpec(APIModel):
    """Optimisation hyper-parameters."""

    total_tokens: int = Field(ge=1, le=1_000_000_000_000_000, description="Training tokens of the run (D in FLOPs = 6 N D).")
    sequence_length: int = Field(2048, ge=16, le=131072, description="Tokens per packed sequence.")
    micro_batch_size: int = Field(4, ge=1, le=1024, description="Sequences per GPU per forward pass.")
    global_batch_size: int = Field(
        512, ge=1, le=1_000_000,
        description="Sequences per optimizer step, all GPUs together; a multiple of microBatchSize x nodes x gpusPerNode.",
    )  # fmt: skip
    learning_rate: float = Field(3e-5, gt=0.0, le=1.0, description="Peak learning rate (1-10 % of the base model's pretraining peak).")
    min_learning_rate: float = Field(3e-6, ge=0.0, le=1.0, description="Floor the schedule decays to (often 0.1 x peak).")
    schedule: Literal["cosine", "wsd", "constant"] = Field("cosine", description="cosine: re-warmup then cosine decay; wsd: warmup-stable-decay.")
    warmup_fraction: float = Field(0.02, ge=0.0, lt=1.0, description="Fraction of steps spent re-warming up (1-5 %).")
    decay_fraction: float = Field(0.1, gt=0.0, le=1.0, description="wsd: final fraction of steps that decays.")
    weight_decay: float = Field(0.1, ge=0.0, le=10.0, description="AdamW weight decay.")
    gradient_clipping: float = Field(1.0, ge=0.0, le=1000.0, description="Max gradient norm; 0 disables clipping.")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1.")
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0, description="AdamW beta2.")
    adam_epsilon: float = Field(1e-8, gt=0.0, le=1.0, description="AdamW epsilon.")
    precision: Literal["bf16", "fp32"] = Field("bf16", description="Compute precision on GPU (CPU runs in fp32).")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory (slower).")
    compile: bool = Field(True, description="torch.compile the model.")
    seed: int = Field(1234, ge=0, description="Seed of data order and initialisation of new embeddings.")

    cel_rules = (
        CEL("self.minLearningRate <= self.learningRate", "minLearningRate must not exceed learningRate", ".minLearningRate"),
        CEL("self.globalBatchSize % self.microBatchSize == 0", "globalBatchSize must be a multiple of microBatchSize", ".globalBatchSize"),
    )


class DeepSpeedSpec(APIModel):
    """DeepSpeed settings."""

    mode: Literal["auto", "always", "never"] = Field(
        "auto",
        description="auto: plain PyTorch (DDP, torch.compile) when the whole training state fits in half a GPU, "
        "else DeepSpeed at zeroStage; always: DeepSpeed; never: plain PyTorch.",
    )
    zero_stage: int = Field(2, ge=0, le=3, description="ZeRO stage: 0 none, 1 optimizer states, 2 + gradients, 3 + parameters.")
    offload_optimizer: bool = Field(False, description="Keep optimizer states in CPU memory (ZeRO 1-3).")
    offload_parameters: bool = Field(False, description="Keep parameters in CPU memory (ZeRO 3 only).")

    cel_rules = (
        CEL("!self.offloadParameters || self.zeroStage == 3", "offloadParameters needs zeroStage 3", ".offloadParameters"),
        CEL("!self.offloadOptimizer || self.zeroStage >= 1", "offloadOptimizer needs zeroStage 1 or higher", ".offloadOptimizer"),
    )


class ResourcesSpec(APIModel):
    """Where and on how much hardware the run trains."""

    node_pool: Name = Field(description="A GPU node pool the platform team defined in the operator's settings.")
    nodes: int = Field(1, ge=1, le=512, description="Nodes (one PyTorchJob Master, the rest Workers).")
    gpus_per_node: int = Field(8, ge=1, le=16, description="GPUs per node (processes per node).")
    cpu: Quantity | None = Field(None, description="CPU request per node; the pool's default when omitted.")
    memory: Quantity | None = Field(None, description="Memory request per node; the pool's default when omitted.")
    priority_class_name: Name | None = Field(None, description="PriorityClass of the training pods.")
    queue_name: Name | None = Field(None, description="Kueue LocalQueue; the job starts suspended until Kueue admits it.")
    tolerations: list[Toleration] = Field(default_factory=list, max_length=16, description="Tolerations added to the pool's own.")


class GeneralEvalSpec(APIModel):
    """A general benchmark watched for forgetting."""

    name: Name = Field(description="Name of the evaluation (a metric label).")
    kind: Literal["perplexity", "lmEvalHarness"] = Field(
        "perplexity",
        description="perplexity of a Corpus's eval split (lower is better), or a multiple-choice benchmark scored by "
        "lm-evaluation-harness (accuracy, higher is better).",
    )
    corpus: Name | None = Field(None, description="perplexity: a Corpus of this namespace whose eval split is scored.")
    task_file: Location | None = Field(
        None,
        description="lmEvalHarness: the task data, a .jsonl or .parquet file or a folder holding exactly one, staged like "
        "a corpus (never fetched from a hub). Rows follow taskSchema.",
    )
    task_schema: Literal["multipleChoice"] = Field(
        "multipleChoice",
        description="lmEvalHarness: multipleChoice rows are {question: string, choices: [string, ...], answer: index "
        "of the right choice}.",
    )
    limit: int = Field(200, ge=10, le=100_000, description="lmEvalHarness: the first `limit` items, the same subset at every evaluation.")

    cel_rules = (
        CEL("self.kind != 'perplexity' || has(self.corpus)", "corpus is required for a perplexity eval", ".corpus"),
        CEL("self.kind != 'lmEvalHarness' || has(self.taskFile)", "taskFile is required for an lmEvalHarness eval", ".taskFile"),
        CEL("self.kind != 'perplexity' || !has(self.taskFile)", "taskFile applies to lmEvalHarness evals only", ".taskFile"),
        CEL("self.kind != 'lmEvalHarness' || !has(self.corpus)", "corpus applies to perplexity evals only", ".corpus"),
    )


class RollbackSpec(APIModel):
    """How action Rollback corrects a run that forgets."""

    max_attempts: int = Field(2, ge=1, le=10, description="Rollbacks before the run is halted (its best checkpoint kept).")
    alpha_factor: float = Field(
        0.5, gt=0.0, le=1.0,
        description="Each rollback multiplies the domain fraction (mixing.alpha and every curriculum point) by this: "
        "more replay.",
    )  # fmt: skip
    learning_rate_factor: float = Field(
        0.5, gt=0.0, le=1.0, description="Each rollback multiplies training.learningRate and minLearningRate by this."
    )

    cel_rules = (
        CEL("self.alphaFactor < 1.0 || self.learningRateFactor < 1.0",
            "a rollback must change something: alphaFactor or learningRateFactor below 1", ".alphaFactor"),  # fmt: skip
    )


class EvaluationSpec(APIModel):
    """Evaluation and the forgetting monitor."""

    interval: int = Field(500, ge=1, le=10_000_000, description="Optimizer steps between evaluations (one runs before the first update).")
    max_batches: int = Field(50, ge=1, le=100_000, description="Batches per evaluation set.")
    general_evals: list[GeneralEvalSpec] = Field(
        default_factory=list, max_length=16, description="General benchmarks; empty: perplexity on the replay corpora's eval splits."
    )
    forgetting_threshold: float = Field(0.03, gt=0.0, lt=1.0, description="Relative general regression that counts as forgetting (0.03 = 3 %).")
    min_standard_errors: float = Field(
        2.0, ge=0.0, le=10.0,
        description="lmEvalHarness evals: a drop counts only when it also exceeds this many standard errors of the "
        "difference from the baseline (sqrt(se^2 + se_baseline^2)); 0: the threshold alone (also for a point whose "
        "stderr is missing or not finite). Default 2: a flat 200-item benchmark rarely halts a run (under 2 % of runs "
        "at a 3 % threshold and patience 3; about a fifth with 1).",
    )  # fmt: skip
    patience: int = Field(3, ge=1, le=100, description="Consecutive evaluations over the threshold before acting.")
    action: Literal["Halt", "Warn", "Rollback"] = Field(
        "Halt",
        description="Halt: suspend the job and keep the best checkpoint; Warn: condition and Event only; Rollback: "
        "restart from the best eligible checkpoint with more replay and a lower learning rate (rollback), at most "
        "rollback.maxAttempts times, then Halt.",
    )
    rollback: RollbackSpec = Field(default_factory=RollbackSpec, description="action Rollback: the correction and its cap.")


class TrainerSpec(APIModel):
    """The trainer container, within what the operator's settings allow."""

    image: str | None = Field(None, max_length=512, description="Trainer image; must be in the operator's allowed list. Default: the operator's.")
    metrics_port: int = Field(9400, ge=1024, le=65535, description="Port of the trainer's Prometheus endpoint.")
    termination_grace_period_seconds: int | None = Field(
        None, ge=30, le=86400,
        description="Seconds a stopped trainer pod gets to finish its step and save a checkpoint (preemption, Kueue "
        "eviction, a node drain); at most the platform's limit. Default: the operator's.",
    )  # fmt: skip


class CPTRunSpec(APIModel):
    """A continued-pretraining run."""

    base_model: BaseModelSpec = Field(description="The pretrained model to continue from (immutable once started).")
    corpora: list[CorpusRef] = Field(min_length=1, max_length=32, description="Corpora of this namespace and their roles (immutable once started).")
    mixing: MixingSpec = Field(default_factory=MixingSpec, description="Domain/replay mixing.")
    tokenizer_extension: TokenizerExtensionSpec = Field(default_factory=TokenizerExtensionSpec, description="Vocabulary extension.")
    training: TrainingSpec = Field(description="Optimisation hyper-parameters.")
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec, description="DeepSpeed settings.")
    resources: ResourcesSpec = Field(description="Node pool and size.")
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec, description="Evaluation and forgetting control.")
    checkpoint_policy_ref: LocalObjectReference = Field(description="The CheckpointPolicy of this namespace the run follows.")
    trainer: TrainerSpec = Field(default_factory=TrainerSpec, description="Trainer container.")
    suspend: bool = Field(False, description="Suspend the run (frees its GPUs); false resumes from the newest checkpoint.")

    cel_rules = (
        CEL("self.corpora.exists(c, c.role == 'domain')", "corpora must include at least one domain corpus", ".corpora"),
        CEL(
            "self.corpora.all(c, self.corpora.exists_one(d, d.name == c.name))",
            "corpora must not name the same Corpus twice",
            ".corpora",
        ),
        CEL(
            "self.mixing.alpha == 1.0 || self.corpora.exists(c, c.role == 'replay')",
            "mixing.alpha below 1 needs at least one replay corpus",
            ".mixing.alpha",
        ),
        CEL(
            "self.evaluation.action != 'Rollback' || self.evaluation.rollback.alphaFactor == 1.0 "
            "|| self.corpora.exists(c, c.role == 'replay')",
            "a Rollback that raises replay (rollback.alphaFactor below 1) needs at least one replay corpus",
            ".evaluation.rollback.alphaFactor",
        ),
        CEL(
            "self.training.globalBatchSize % (self.training.microBatchSize * self.resources.nodes * self.resources.gpusPerNode) == 0",
            "training.globalBatchSize must be a multiple of microBatchSize x resources.nodes x resources.gpusPerNode",
            ".training.globalBatchSize",
        ),
        CEL(
            "!has(self.tokenizerExtension.fromCorpus) || self.corpora.exists(c, c.name == self.tokenizerExtension.fromCorpus)",
            "tokenizerExtension.fromCorpus must name one of the run's corpora",
            ".tokenizerExtension.fromCorpus",
        ),
    )


# Rules on the whole object: they need the stored status to know whether a run started.
CPTRUN_ROOT_RULES = (
    CEL(
        "!has(oldSelf.status) || !has(oldSelf.status.startedAt) || self.spec.baseModel == oldSelf.spec.baseModel",
        "spec.baseModel is immutable once the run has started; create a new CPTRun instead",
        ".spec.baseModel",
    ),
    CEL(
        "!has(oldSelf.status) || !has(oldSelf.status.startedAt) || self.spec.corpora == oldSelf.spec.corpora",
        "spec.corpora is immutable once the run has started; create a new CPTRun instead",
        ".spec.corpora",
    ),
    CEL(
        "!has(oldSelf.status) || !has(oldSelf.status.startedAt) || self.spec.tokenizerExtension == oldSelf.spec.tokenizerExtension",
        "spec.tokenizerExtension is immutable once the run has started; create a new CPTRun instead",
        ".spec.tokenizerExtension",
    ),
)


# --------------------------------------------------------------------------- status


class ProgressStatus(StatusModel):
    """How far the run is."""

    step: int | None = Field(None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, ge=0, description="Optimizer steps of the run.")
    display: str | None = Field(None, description="step/totalSteps, for printing.")
    tokens: int | None = Field(None, ge=0, description="Training tokens seen.")
    total_tokens: int | None = Field(None, ge=0, description="Training tokens of the run.")
    percent: float | None = Field(None, ge=0.0, le=100.0, description="Percent done.")
    eta_seconds: float | None = Field(None, ge=0.0, description="Estimated seconds left at the measured tokens/s.")


class MetricsStatus(StatusModel):
    """The latest metrics read from the trainer."""

    train_loss: float | None = Field(None, description="Training loss.")
    learning_rate: float | None = Field(None, description="Learning rate.")
    tokens_per_second: float | None = Field(None, description="Throughput, tokens/s.")
    mfu: float | None = Field(None, description="Model FLOPs utilisation (0-1).")
    domain_perplexity: float | None = Field(None, description="Domain held-out perplexity at the last evaluation.")
    general_score: float | None = Field(None, description="General score at the last evaluation.")
    baseline_general_score: float | None = Field(None, description="General score of the base model.")
    general_regression: float | None = Field(None, description="Relative general regression against the baseline.")
    eval_step: int | None = Field(None, ge=0, description="Step of the last evaluation.")
    updated_at: str | None = Field(None, description="When these were read (RFC 3339).")


class CheckpointRecord(StatusModel):
    """An evaluated checkpoint and why it is kept."""

    step: int = Field(ge=0, description="Step of the checkpoint.")
    uri: str = Field(description="Where it is.")
    domain_perplexity: float | None = Field(None, description="Domain perplexity at this step.")
    general_score: float | None = Field(None, description="General score at this step.")
    general_regression: float | None = Field(None, description="Relative general regression at this step.")
    composite_score: float | None = Field(None, description="Composite score (higher is better).")
    kept_for: list[Annotated[str, Field(max_length=32)]] = Field(default_factory=list, max_length=8, description="Why it is kept: newest, lastN, bestK, milestone, best.")
    attempt: int | None = Field(None, ge=0, description="Rollbacks before the start that wrote it (0: the first start).")
    deleted: bool = Field(False, description="Deleted by the policy.")


class EvaluationRecord(StatusModel):
    """One evaluation the forgetting monitor saw."""

    step: int = Field(ge=0, description="Step of the evaluation (0: the baseline, before the first update).")
    domain_perplexity: float | None = Field(None, description="Domain perplexity.")
    general_regression: float | None = Field(None, description="Relative general regression against the baseline.")


class BestCheckpoint(StatusModel):
    """The run's result: the best eligible checkpoint by the policy's ranking."""

    step: int = Field(ge=0, description="Step of the checkpoint.")
    uri: str = Field(description="Where it is.")
    metric: str | None = Field(None, description="The ranking metric.")
    value: float | None = Field(None, description="Its value.")


class CostEstimate(StatusModel):
    """The planning estimate for the run."""

    flops: float | None = Field(None, ge=0.0, description="Training FLOPs (6 N D).")
    gpu_hours: float | None = Field(None, ge=0.0, description="GPU-hours at the configured achieved TFLOP/s.")
    cost: float | None = Field(None, ge=0.0, description="Cost at the configured price per GPU-hour.")


class TokenizerExtensionStatus(StatusModel):
    """What the vocabulary extension did to the domain eval sample (the trainer's metrics.json)."""

    added_tokens: int | None = Field(None, ge=0, description="Tokens added to the vocabulary.")
    tokens_before: int | None = Field(None, ge=0, description="Tokens of the domain sample with the base tokenizer.")
    tokens_after: int | None = Field(None, ge=0, description="Tokens of the same sample with the extended tokenizer.")
    token_reduction: float | None = Field(None, description="Fraction of tokens saved (negative: more tokens).")
    chars_per_token_before: float | None = Field(None, description="Characters per token before.")
    chars_per_token_after: float | None = Field(None, description="Characters per token after.")


class EngineStatus(StatusModel):
    """The engine the trainer runs and why (decide/engine_choice.py, the trainer's own rule)."""

    kind: str | None = Field(None, description="torch, deepspeed, or auto (the trainer decides at start: no parameter hint).")
    zero_stage: int | None = Field(None, ge=0, le=3, description="ZeRO stage (0 for the plain PyTorch path).")
    precision: str | None = Field(None, description="Compute precision: bf16 or fp32.")
    compile: bool | None = Field(None, description="torch.compile on.")
    reason: str | None = Field(None, description="Why.")


class RollbackRecord(StatusModel):
    """One rollback of action Rollback."""

    attempt: int = Field(ge=1, description="1 for the first rollback.")
    from_step: int = Field(ge=0, description="The checkpoint the run restarts from (the best eligible one).")
    at_step: int | None = Field(None, ge=0, description="The evaluation that crossed the threshold.")
    regression: float | None = Field(None, description="The general regression then.")
    alpha: float | None = Field(None, description="mixing.alpha after this rollback.")
    learning_rate: float | None = Field(None, description="training.learningRate after this rollback.")
    outcome: Literal["Restarting", "Resumed", "ForgotAgain"] | None = Field(
        None, description="Restarting: stopping the job to restart it; Resumed: training from fromStep with the new settings; "
        "ForgotAgain: crossed the threshold again.",
    )  # fmt: skip
    at: str | None = Field(None, description="When the rollback was decided (RFC 3339).")


class HaltStatus(StatusModel):
    """Why the forgetting monitor acted."""

    step: int | None = Field(None, ge=0, description="Step of the evaluation that triggered the action.")
    regression: float | None = Field(None, description="Relative general regression then.")
    threshold: float | None = Field(None, description="The threshold.")
    action: str | None = Field(
        None, description="Halt (the job suspended; also a Rollback run whose rollbacks are used up or that had no "
        "eligible checkpoint: it ends halted) or Warn (condition and Event only). A Rollback correction is recorded "
        "in status.rollbacks, never here.",
    )  # fmt: skip


class RestartsStatus(StatusModel):
    """The PyTorchJob's restarts the operator counted against its backoffLimit (the training
    operator's own limit does not count restarts under restartPolicy ExitCode)."""

    count: int = Field(ge=0, description="Restarts (new Restarting conditions of the job) since sinceCheckpointStep; "
                                         "more than the operator's backoffLimit fails the run (reason RestartLimitExceeded).")  # fmt: skip
    last_restart_time: str | None = Field(None, max_length=64, description="lastTransitionTime of the newest Restarting condition counted (RFC 3339): never counted twice.")  # noqa: E501
    since_checkpoint_step: int = Field(0, ge=0, description="The run's newest checkpoint step when the count started (0: none); a newer checkpoint starts the count again.")  # noqa: E501


class CheckpointStorageStatus(StatusModel):
    """Where the run's checkpoints are and whether they go with it, fixed when its job was created."""

    uri: str = Field(max_length=2048, description="The run's own checkpoint prefix (<storage>/<namespace>/<run>/<uid>).")
    delete_with_run: bool = Field(description="The CheckpointPolicy's deleteWithRun when the job was created; deletion also needs it true then.")  # noqa: E501


class CleanupJobStatus(StatusModel):
    """The Job the operator created to delete the run's PVC checkpoints (deleteWithRun)."""

    name: str = Field(max_length=63, description="Its name.")
    uid: str = Field(max_length=64, description="Its uid: only this Job's outcome counts.")


class CPTRunStatus(StatusModel):
    """Observed state of a CPTRun."""

    phase: (
        Literal["Pending", "WaitingForCorpus", "Starting", "Running", "Restarting", "Suspended", "Halted", "Succeeded", "Failed"]
        | None
    ) = Field(None, description="Where the run is in its life.")
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation last acted on.")
    conditions: list[Condition] = Field(default_factory=list, max_length=16, description="Standard conditions.")
    started_at: str | None = Field(None, description="When the training job was first created (RFC 3339).")
    completed_at: str | None = Field(None, description="When the run finished (RFC 3339).")
    pytorch_job_name: str | None = Field(None, description="The PyTorchJob.")
    config_map_name: str | None = Field(None, description="The ConfigMap holding the trainer config.")
    progress: ProgressStatus | None = Field(None, description="Progress.")
    metrics: MetricsStatus | None = Field(None, description="Latest metrics.")
    checkpoints: list[CheckpointRecord] = Field(default_factory=list, max_length=1000, description="Evaluated checkpoints.")
    evaluations: list[EvaluationRecord] = Field(
        default_factory=list, max_length=200, description="Recent evaluations (the newest 200), for the forgetting monitor."
    )
    best_checkpoint: BestCheckpoint | None = Field(None, description="The best eligible checkpoint.")
    cost_estimate: CostEstimate | None = Field(None, description="Planning estimate.")
    halt: HaltStatus | None = Field(None, description="The forgetting monitor's decision.")
    restarts: RestartsStatus | None = Field(None, description="Restarts of the PyTorchJob counted against the operator's backoffLimit.")
    rollbacks: list[RollbackRecord] = Field(default_factory=list, max_length=10, description="action Rollback: every attempt, in order.")
    engine: EngineStatus | None = Field(None, description="The engine, ZeRO stage, precision and compile mode the trainer runs, and why.")
    tokenizer_extension: TokenizerExtensionStatus | None = Field(
        None, description="The vocabulary extension's effect on the domain eval sample (condition TokenizerExtensionEffective)."
    )
    checkpoint_storage: CheckpointStorageStatus | None = Field(
        None, description="Where the checkpoints are and whether they are deleted with the run, as fixed when the job was created."
    )
    cleanup_job: CleanupJobStatus | None = Field(None, description="The cleanup Job deleting the PVC checkpoints, once created.")
    delete_checkpoints_with_run: bool | None = Field(
        None,
        description="checkpointStorage.deleteWithRun; while true a finalizer makes deletion wait until the checkpoints are deleted.",  # noqa: E501
    )
