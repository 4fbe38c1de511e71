"""Render the trainer contract configs from the API objects (pure functions).

`render_trainer_config(run, corpora, policy)` -> the TrainerConfig a CPTRun's trainer gets;
`render_curation_config(corpus)` -> the CurationConfig a Corpus's curation Job gets.
"""

from __future__ import annotations

import math

from cpt_trainer.contract.config import (
    BatchConfig,
    CheckpointConfig,
    CorpusInput,
    CorpusSourceConfig,
    CurationConfig,
    CurationStages,
    DataConfig,
    EngineConfig,
    EvalConfig,
    GeneralEval,
    MetricsConfig,
    ModelConfig,
    OptimConfig,
    RunIdentity,
    S3Settings,
    TokenizerExtensionConfig,
    TrainerConfig,
)
from cpt_trainer.contract.config import CurriculumPoint as CurriculumPointConfig
from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.common import Location, StorageLocation
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.decide.rollback import settings_after
from cpt_operator.render.locations import location_uri, run_prefix
from cpt_trainer.contract import metrics as metric_names

DEFAULT_PVC_ROOT = "/mnt/cpt/pvc"
RETAIN_FILE_NAME = metric_names.RETAIN_FILE_NAME
RETAIN_DIR = "/etc/cpt-retain"
"""Where the trainer pod mounts the run's retain ConfigMap (PVC storage only)."""


def total_steps(spec: CPTRunSpec) -> int:
    """Optimizer steps that cover spec.training.totalTokens (the last step may overshoot)."""
    per_step = spec.training.global_batch_size * spec.training.sequence_length
    return max(1, math.ceil(spec.training.total_tokens / per_step))


def _s3_settings(*locations: Location | StorageLocation | None) -> S3Settings:
    for loc in locations:
        if loc is not None and loc.s3 is not None and (loc.s3.endpoint or loc.s3.region):
            return S3Settings(endpoint_url=loc.s3.endpoint, region=loc.s3.region)
    return S3Settings()


def render_trainer_config(
    namespace: str,
    name: str,
    spec: CPTRunSpec,
    corpora: dict[str, CorpusSpec],
    policy: CheckpointPolicySpec,
    uid: str = "",
    pvc_root: str = DEFAULT_PVC_ROOT,
    corpus_outputs: dict[str, str] | None = None,
    checkpoint_uri: str | None = None,
    rollbacks: list[dict] | None = None,
) -> TrainerConfig:
    """The TrainerConfig of one run. `corpora` maps each referenced Corpus name to its spec;
    `corpus_outputs` may override where a corpus's shards are (e.g. its status.outputUri);
    `rollbacks` (status.rollbacks) scale the mix and learning rates and name the step to resume
    from (decide/rollback.py)."""
    outputs = corpus_outputs or {}
    after = settings_after(spec, list(rollbacks or []))

    def corpus_uri(corpus_name: str) -> str:
        return outputs.get(corpus_name) or location_uri(corpora[corpus_name].output, pvc_root)

    t = spec.training
    def general_eval(g) -> GeneralEval:
        if g.kind == "perplexity":
            return GeneralEval(name=g.name, kind="perplexity", uri=corpus_uri(g.corpus))
        return GeneralEval(name=g.name, kind="lm_eval", uri=location_uri(g.task_file, pvc_root),
                           task_schema="multiple_choice", limit=g.limit)  # fmt: skip

    general = [general_eval(g) for g in spec.evaluation.general_evals]
    checkpoint_uri = checkpoint_uri or run_prefix(policy.storage, namespace, name, pvc_root, uid)
    return TrainerConfig(
        identity=RunIdentity(namespace=namespace, name=name, uid=uid),
        model=ModelConfig(
            uri=location_uri(spec.base_model.location, pvc_root),
            tokenizer_uri=location_uri(spec.base_model.tokenizer, pvc_root) if spec.base_model.tokenizer else None,
        ),
        tokenizer_extension=TokenizerExtensionConfig(
            tokens=list(spec.tokenizer_extension.tokens) if spec.tokenizer_extension.enabled else []
        ),
        data=DataConfig(
            corpora=[CorpusInput(name=c.name, role=c.role, weight=c.weight, uri=corpus_uri(c.name)) for c in spec.corpora],
            alpha=after.alpha,
            curriculum=[CurriculumPointConfig(step=step, alpha=alpha) for step, alpha in after.curriculum],
            sequence_length=t.sequence_length,
            seed=t.seed,
        ),
        optim=OptimConfig(
            learning_rate=after.learning_rate,
            min_learning_rate=after.min_learning_rate,
            schedule=t.schedule,
            warmup_fraction=t.warmup_fraction,
            decay_fraction=t.decay_fraction,
            weight_decay=t.weight_decay,
            beta1=t.adam_beta1,
            beta2=t.adam_beta2,
            eps=t.adam_epsilon,
            grad_clip=t.gradient_clipping,
        ),
        batch=BatchConfig(
            micro_batch_size=t.micro_batch_size, global_batch_size=t.global_batch_size, total_steps=total_steps(spec)
        ),
        engine=EngineConfig(
            kind={"auto": "auto", "always": "deepspeed", "never": "torch"}[spec.deepspeed.mode],
            zero_stage=spec.deepspeed.zero_stage,
            offload_optimizer=spec.deepspeed.offload_optimizer,
            offload_parameters=spec.deepspeed.offload_parameters,
            gradient_checkpointing=t.gradient_checkpointing,
            compile=t.compile,
            precision=t.precision,
        ),
        eval=EvalConfig(
            interval=spec.evaluation.interval,
            max_batches=spec.evaluation.max_batches,
            general=general,
            forgetting_threshold=spec.evaluation.forgetting_threshold,
            min_standard_errors=spec.evaluation.min_standard_errors,
            patience=spec.evaluation.patience,
        ),
        checkpoint=CheckpointConfig(
            interval=policy.save_interval,
            uri=checkpoint_uri,
            retain_file=f"{RETAIN_DIR}/{RETAIN_FILE_NAME}" if policy.storage.pvc is not None else None,
            resume_step=after.resume_step,
        ),
        attempt=after.attempt,
        metrics=MetricsConfig(port=spec.trainer.metrics_port),
        s3=_s3_settings(policy.storage, spec.base_model.location, *(corpora[c.name].output for c in spec.corpora),
                        *(g.task_file for g in spec.evaluation.general_evals)),
    )


def render_curation_config(namespace: str, name: str, spec: CorpusSpec, uid: str = "", pvc_root: str = DEFAULT_PVC_ROOT) -> CurationConfig:
    """The CurationConfig of one Corpus."""
    c = spec.curation
    stages = CurationStages.model_validate(
        {
            "normalize": {"enabled": c.normalize.enabled, "form": c.normalize.form},
            "length_filter": {
                "enabled": c.length_filter.enabled,
                "min_tokens": c.length_filter.min_tokens,
                "max_tokens": c.length_filter.max_tokens,
            },
            "exact_dedup": {"enabled": c.exact_dedup.enabled},
            "near_dedup": {
                "enabled": c.near_dedup.enabled,
                "num_perm": c.near_dedup.num_perm,
                "threshold": c.near_dedup.threshold,
                "ngram": c.near_dedup.ngram,
            },
            "quality_filter": {
                "enabled": c.quality_filter.enabled,
                "model_uri": location_uri(c.quality_filter.reference_model, pvc_root) if c.quality_filter.reference_model else None,
                "max_perplexity": c.quality_filter.max_perplexity,
                "batch_size": c.quality_filter.batch_size,
            },
            "pii": {
                "enabled": c.pii.enabled,
                "kinds": ["credit_card" if k == "creditCard" else k for k in c.pii.kinds],
                "national_ids": [{"name": n.name, "regex": n.regex} for n in c.pii.national_ids],
            },
            "language": {"enabled": c.language.enabled, "scripts": list(c.language.scripts), "min_fraction": c.language.min_fraction},
        }
    )
    return CurationConfig(
        identity=RunIdentity(namespace=namespace, name=name, uid=uid),
        sources=[CorpusSourceConfig(uri=location_uri(s.location, pvc_root), include=list(s.include)) for s in spec.sources],
        format=spec.format,
        text_field=spec.text_field,
        text_unit=spec.text_unit,
        stages=stages,
        tokenizer_uri=location_uri(spec.tokenizer, pvc_root),
        eval_fraction=spec.eval_fraction,
        output_uri=location_uri(spec.output, pvc_root),
        parallelism=spec.parallelism,
        seed=spec.seed,
        s3=_s3_settings(spec.output, *(s.location for s in spec.sources)),
    )
