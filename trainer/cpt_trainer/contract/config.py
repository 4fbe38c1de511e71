"""The trainer/operator contract: the JSON configs the operator hands to the trainer image.

The operator renders a `TrainerConfig` (for `cpt-trainer train`) from a CPTRun and a
`CurationConfig` (for `cpt-trainer curate`) from a Corpus, and mounts each as a ConfigMap.
The trainer validates the file and fails fast with every invalid field named.

This module imports neither torch nor kopf: both sides import it.

Storage is always a URI here: `s3://bucket/key...` or an absolute local path (a PVC is
mounted by the operator and appears to the trainer as a path). S3 credentials never
appear in a config: they reach the trainer as `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` environment variables from the tenant's own Secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class RunIdentity(_Strict):
    """Who a config belongs to: the labels every metric carries."""

    namespace: str = Field(description="Kubernetes namespace of the resource (tenant).")
    name: str = Field(description="Name of the CPTRun or Corpus.")
    uid: str = Field("", description="UID of the resource, when known.")


class S3Settings(_Strict):
    """How to reach an S3-compatible store. Credentials come from the environment."""

    endpoint_url: str | None = Field(None, description="Endpoint of an S3-compatible server; None for AWS.")
    region: str | None = Field(None, description="Region name, if the server needs one.")


# --------------------------------------------------------------------------- curation
#
# Stage order (docs/curation.md): read -> normalize -> pii -> language -> length_filter
# -> quality_filter -> exact_dedup -> near_dedup -> split/tokenize. The per-document stages
# run on every worker over its slice; the two dedup stages and the quality decision run
# in the reduce step over the whole corpus, so the result does not depend on `parallelism`.


class NormalizeStage(_Strict):
    """Unicode normalisation and whitespace clean-up (control characters dropped, runs of
    blanks collapsed, at most one empty line in a row, lines right-stripped)."""

    enabled: bool = True
    form: Literal["NFC", "NFKC"] = Field("NFC", description="Unicode normalisation form.")


class LengthFilterStage(_Strict):
    enabled: bool = True
    min_tokens: int = Field(16, ge=0, description="Drop documents shorter than this many tokens.")
    max_tokens: int = Field(1_000_000, ge=1, description="Drop documents longer than this many tokens.")

    @model_validator(mode="after")
    def _range(self) -> "LengthFilterStage":
        if self.min_tokens > self.max_tokens:
            raise ValueError("min_tokens must not exceed max_tokens")
        return self


class ExactDedupStage(_Strict):
    """Drop documents whose content hash (BLAKE2b-128 of the cleaned text) was seen earlier."""

    enabled: bool = True


class NearDedupStage(_Strict):
    """MinHash-LSH near-duplicate removal; a document is dropped when it shares an LSH band
    with an earlier *kept* document whose signature agrees on at least `threshold` of the
    permutations (the estimated Jaccard similarity). The first occurrence is kept."""

    enabled: bool = True
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations.")
    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard similarity above which a document is a near-duplicate.")
    ngram: int = Field(5, ge=1, le=32, description="Word n-gram size of the shingles.")
    bands: int | None = Field(None, ge=2, le=1024, description="LSH bands; None: chosen by datasketch for the weights below.")
    rows: int | None = Field(None, ge=1, le=1024, description="Rows (permutations) per band; set together with `bands`.")
    false_positive_weight: float = Field(0.1, ge=0.0, le=1.0, description="LSH parameter choice: weight of false candidates.")
    false_negative_weight: float = Field(0.9, ge=0.0, le=1.0, description="LSH parameter choice: weight of missed pairs.")
    verify: bool = Field(True, description="Confirm band collisions with the signatures' estimated Jaccard >= threshold.")
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations (datasketch's `seed`).")

    @model_validator(mode="after")
    def _bands_rows(self) -> "NearDedupStage":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("bands and rows must be set together")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}")
        return self


class QualityFilterStage(_Strict):
    enabled: bool = False
    model_uri: str | None = Field(None, description="Small causal LM (local path or s3://) used to score perplexity.")
    max_perplexity: float = Field(1000.0, gt=1.0, description="Drop documents whose perplexity exceeds this.")
    min_perplexity: float | None = Field(None, ge=1.0, description="Also drop documents below this (memorised boilerplate); None: off.")
    batch_size: int = Field(16, ge=1, le=1024)
    max_length: int = Field(512, ge=8, le=8192, description="Tokens of each document scored.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available, else cpu.")

    @model_validator(mode="after")
    def _model_needed(self) -> "QualityFilterStage":
        if self.enabled and not self.model_uri:
            raise ValueError("model_uri is required when the quality filter is enabled")
        if self.min_perplexity is not None and self.min_perplexity >= self.max_perplexity:
            raise ValueError("min_perplexity must be below max_perplexity")
        return self


class NationalIdPattern(_Strict):
    name: str = Field(description="Kind name used in counts and in the replacement text.")
    regex: str = Field(description="Python regular expression matching one ID.")

    @model_validator(mode="after")
    def _compiles(self) -> "NationalIdPattern":
        import re

        try:
            re.compile(self.regex)
        except re.error as exc:
            raise ValueError(f"regex of {self.name!r} does not compile: {exc}") from None
        return self


class PiiStage(_Strict):
    enabled: bool = True
    kinds: list[Literal["email", "phone", "ip", "credit_card"]] = Field(
        default_factory=lambda: ["email", "phone", "ip", "credit_card"]
    )
    national_ids: list[NationalIdPattern] = Field(default_factory=list)
    replacement: str = Field("<{kind}>", description="Replacement text; `{kind}` is the PII kind.")


class LanguageStage(_Strict):
    enabled: bool = False
    scripts: list[str] = Field(default_factory=lambda: ["Latin"], description="Unicode scripts a document must be mostly written in.")
    min_fraction: float = Field(0.8, gt=0.0, le=1.0)


class CurationStages(_Strict):
    normalize: NormalizeStage = Field(default_factory=NormalizeStage)
    length_filter: LengthFilterStage = Field(default_factory=LengthFilterStage)
    exact_dedup: ExactDedupStage = Field(default_factory=ExactDedupStage)
    near_dedup: NearDedupStage = Field(default_factory=NearDedupStage)
    quality_filter: QualityFilterStage = Field(default_factory=QualityFilterStage)
    pii: PiiStage = Field(default_factory=PiiStage)
    language: LanguageStage = Field(default_factory=LanguageStage)


class TokenizerAnalysisConfig(_Strict):
    """Tokenizer efficiency on a content-hash-selected sample (the same sample at any parallelism)."""

    enabled: bool = True
    sample_fraction: float = Field(0.1, gt=0.0, le=1.0, description="Fraction of documents measured.")
    min_frequency: int = Field(5, ge=1, description="A word must occur this often in the sample to be proposed.")
    min_pieces: int = Field(3, ge=2, description="A word split into at least this many tokens is fragmented.")
    extension_size: int = Field(256, ge=0, le=65536, description="Longest proposed vocabulary extension.")


class CorpusSourceConfig(_Strict):
    uri: str = Field(description="s3://bucket/prefix or an absolute local path (file or folder).")
    include: list[str] = Field(default_factory=lambda: ["**/*"], description="Glob patterns below the URI.")


class CurationConfig(_Strict):
    """Input of `cpt-trainer curate --config FILE`."""

    version: Literal[1] = CONFIG_VERSION
    identity: RunIdentity
    sources: list[CorpusSourceConfig] = Field(min_length=1)
    format: Literal["jsonl", "parquet", "text"] = "jsonl"
    text_field: str = "text"
    text_unit: Literal["file", "paragraph", "line"] = Field(
        "file", description="format text: what one document is (a whole file, a blank-line-separated block, a line)."
    )
    stages: CurationStages = Field(default_factory=CurationStages)
    tokenizer_uri: str = Field(description="Tokenizer (local path or s3://) that tokenizes the kept documents.")
    eos_token: str | None = Field(None, description="End-of-document token; None: the tokenizer's own eos_token.")
    tokenizer_analysis: TokenizerAnalysisConfig = Field(default_factory=TokenizerAnalysisConfig)
    eval_fraction: float = Field(0.01, ge=0.0, lt=0.5, description="Fraction of kept documents held out for evaluation.")
    shard_tokens: int = Field(50_000_000, ge=1024, description="Tokens per output shard.")
    output_uri: str = Field(description="Where shards, index and manifest are written.")
    parallelism: int = Field(1, ge=1, le=1024, description="Number of workers the corpus is sliced over.")
    worker_index: int | None = Field(
        None, ge=0, description="This worker's slice; None: $JOB_COMPLETION_INDEX (Indexed Job), else 0."
    )
    stage: Literal["all", "map", "reduce"] = Field(
        "all",
        description="all: map this worker's slice, then worker 0 waits for every slice and reduces; "
        "map: only the slice; reduce: only the cross-slice dedup and the shards (all maps done).",
    )
    reduce_wait_seconds: float = Field(6 * 3600.0, gt=0.0, description="stage all: how long worker 0 waits for the other slices.")
    keep_work: bool = Field(False, description="Keep the intermediate `_work/` folder (signatures, token spills) after success.")
    termination_message_path: str = Field(
        "/dev/termination-log", description="Where the small status JSON goes for the pod's termination message (if writable)."
    )
    seed: int = 0
    s3: S3Settings = Field(default_factory=S3Settings)

    @model_validator(mode="after")
    def _worker(self) -> "CurationConfig":
        if self.worker_index is not None and self.worker_index >= self.parallelism:
            raise ValueError(f"worker_index {self.worker_index} must be below parallelism {self.parallelism}")
        return self


# --------------------------------------------------------------------------- training


class ModelConfig(_Strict):
    uri: str = Field(description="Base model folder (local path or s3://), loadable by transformers.")
    tokenizer_uri: str | None = Field(None, description="Tokenizer folder; the model's folder when None.")
    dtype: Literal["auto", "bfloat16", "float32"] = Field("auto", description="auto: bf16 on GPU, float32 on CPU.")


class TokenizerExtensionConfig(_Strict):
    tokens: list[str] = Field(default_factory=list, description="Domain tokens added to the vocabulary.")


class CorpusInput(_Strict):
    name: str = Field(description="The Corpus name (for labels and reports).")
    role: Literal["domain", "replay"]
    weight: float = Field(gt=0.0, description="Share within its role.")
    uri: str = Field(description="The Corpus output (shards, index, manifest).")


class CurriculumPoint(_Strict):
    step: int = Field(ge=0)
    alpha: float = Field(ge=0.0, le=1.0)


class DataConfig(_Strict):
    corpora: list[CorpusInput] = Field(min_length=1)
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="Domain fraction of training tokens.")
    curriculum: list[CurriculumPoint] = Field(default_factory=list, description="Alpha by step, linearly interpolated.")
    sequence_length: int = Field(2048, ge=8, le=131072)
    seed: int = 1234


class OptimConfig(_Strict):
    learning_rate: float = Field(3e-5, gt=0.0, le=1.0)
    min_learning_rate: float = Field(3e-6, ge=0.0, le=1.0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_fraction: float = Field(0.02, ge=0.0, lt=1.0)
    decay_fraction: float = Field(0.1, gt=0.0, le=1.0, description="wsd only: final fraction of steps that decays.")
    weight_decay: float = Field(0.1, ge=0.0)
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.95, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0)
    grad_clip: float = Field(1.0, ge=0.0, description="Max gradient norm; 0 disables clipping.")


class BatchConfig(_Strict):
    micro_batch_size: int = Field(4, ge=1)
    global_batch_size: int = Field(512, ge=1, description="Sequences per optimizer step, all ranks together.")
    total_steps: int = Field(ge=1)


class EngineConfig(_Strict):
    kind: Literal["auto", "deepspeed", "torch"] = Field(
        "auto",
        description=(
            "auto: the plain PyTorch path (DDP, torch.compile, fused AdamW) when the full training state "
            "(16 bytes/parameter) fits in half of one GPU, else DeepSpeed at zero_stage; torch on CPU "
            "(deepspeed and torch run as configured on CPU too, never replaced)."
        ),
    )
    zero_stage: int = Field(2, ge=0, le=3)
    offload_optimizer: bool = False
    offload_parameters: bool = False
    gradient_checkpointing: bool = False
    compile: bool = True
    precision: Literal["bf16", "fp32"] = "bf16"
    device: Literal["auto", "cuda", "cpu"] = "auto"


class GeneralEval(_Strict):
    name: str
    kind: Literal["perplexity", "lm_eval"] = "perplexity"
    uri: str = Field(
        description="perplexity: a Corpus output whose eval split is scored; lm_eval: the task file (.jsonl or "
        ".parquet) or a folder holding exactly one (local path or s3://), never a hub."
    )
    task_schema: Literal["multiple_choice"] = Field(
        "multiple_choice", description="lm_eval: rows are {question: str, choices: [str, ...], answer: index of the right choice}."
    )
    limit: int = Field(200, ge=10, le=100_000, description="lm_eval: the first `limit` items, the same subset at every evaluation.")


class EvalConfig(_Strict):
    interval: int = Field(500, ge=1, description="Steps between evaluations; one also runs before the first update.")
    max_batches: int = Field(50, ge=1)
    general: list[GeneralEval] = Field(default_factory=list, description="Empty: the replay corpora's eval splits.")
    forgetting_threshold: float = Field(0.03, gt=0.0, lt=1.0)
    min_standard_errors: float = Field(
        2.0, ge=0.0, le=10.0,
        description="A benchmark (accuracy) regression counts only when its drop also exceeds this many standard "
        "errors of the difference (sqrt(se^2 + se_baseline^2)); 0: the threshold alone. A point without a finite "
        "stderr uses the threshold alone. Default 2: a flat benchmark of 200 items at 60 % (3 % threshold, "
        "patience 3) halts under 2 % of runs, where 1 halts about a fifth of them.",
    )
    patience: int = Field(3, ge=1)


class CheckpointConfig(_Strict):
    interval: int = Field(500, ge=1, description="Steps between checkpoints.")
    uri: str = Field(description="This run's own checkpoint prefix (s3://... or a local path).")
    retain_file: str | None = Field(
        None, description="Path of the operator's retain list (PVC storage): the trainer deletes what it does not name."
    )
    resume_step: int | None = Field(
        None,
        ge=0,
        description="Rollback: resume from the complete checkpoint of exactly this step instead of the newest one; "
        "later checkpoints in this prefix (the abandoned branch) are deleted first. Done once: the trainer writes "
        "`rollback-NNNNNNNN.json` in the prefix, and a restart with the same value resumes from the newest checkpoint.",
    )


class MetricsConfig(_Strict):
    port: int = Field(9400, ge=0, le=65535, description="Prometheus exporter port; 0 picks a free port.")


class TrainerConfig(_Strict):
    """Input of `cpt-trainer train --config FILE`."""

    version: Literal[1] = CONFIG_VERSION
    identity: RunIdentity
    model: ModelConfig
    tokenizer_extension: TokenizerExtensionConfig = Field(default_factory=TokenizerExtensionConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    batch: BatchConfig
    engine: EngineConfig = Field(default_factory=EngineConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    s3: S3Settings = Field(default_factory=S3Settings)
    attempt: int = Field(
        0, ge=0, description="Rollbacks (forgetting action Rollback) before this start; written into every checkpoint's "
        "metrics.json as `attempt`, so the operator tells a rolled-back run's new checkpoints from the abandoned ones."
    )
    termination_message_path: str = Field(
        "/dev/termination-log",
        description="Where rank 0 writes a small JSON report when a configured evaluation cannot run "
        "({reason: EvaluationUnavailable, eval, message}); the operator reads it from the pod's termination message.",
    )

    @model_validator(mode="after")
    def _cross_field(self) -> "TrainerConfig":
        if self.optim.min_learning_rate > self.optim.learning_rate:
            raise ValueError("optim.min_learning_rate must not exceed optim.learning_rate")
        if self.batch.global_batch_size % self.batch.micro_batch_size:
            raise ValueError("batch.global_batch_size must be a multiple of batch.micro_batch_size")
        if self.engine.offload_parameters and self.engine.zero_stage != 3:
            raise ValueError("engine.offload_parameters needs engine.zero_stage 3")
        return self


class ConfigError(ValueError):
    """A config file that does not validate; the message names every invalid field."""


def _format(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"{path}: {err['msg']}")
    return "; ".join(lines)


T = TypeVar("T", bound=BaseModel)


def load_config(path: str | Path, model: type[T]) -> T:
    """Read and validate a JSON config file, raising ConfigError naming every bad field."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid {model.__name__} in {path}: {_format(exc)}") from None
