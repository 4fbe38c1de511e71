"""`cpt-trainer train --config FILE`: validate everything cheap first, then build and run the Trainer.

Order: config -> model/tokenizer folders (staged from S3 if needed) -> corpus manifests
against the tokenizer -> engine choice and a memory-fit check -> (only then) load the
model, extend the vocabulary, build the engine, resume or take the baseline, train.
Exit codes: 0 done, 143 (128 + SIGTERM) stopped on SIGTERM after a checkpoint (retryable: the
next attempt resumes), 2 invalid config or input (raised as ConfigError / TrainerInputError, one
line), 1 out of memory (one line: deterministic for a given config, so permanent; an OOM *kill* is
SIGKILL, 137, retried) or a crash, 200 a communication error (a peer lost, a collective timed out:
transient; classified in cli.py by launcher.is_communication_error); `cpt-trainer launch` turns
them into the pod's code.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cpt_trainer.contract.config import TrainerConfig, load_config
from cpt_trainer.local_paths import PathOutsideFolder, resolve_inside
from cpt_trainer.train import distributed
from cpt_trainer.curate.status import write_termination_message
from cpt_trainer.train.benchmarks import Benchmark, BenchmarkUnavailable, load_benchmark
from cpt_trainer.train.checkpointing import CheckpointManager
from cpt_trainer.train.data_mixing import MixedSequenceStream, MixSource
from cpt_trainer.train.deepspeed_config import gradient_accumulation_steps
from cpt_trainer.train.engines import build_engine, choose_engine_kind, training_state_bytes_per_gpu
from cpt_trainer.train.errors import TrainerInputError
from cpt_trainer.train.evaluation import Evaluator, PerplexitySet, eval_sequences
from cpt_trainer.train.flops import device_peak_flops, flops_per_token
from cpt_trainer.train.metrics_exporter import TrainerMetrics
from cpt_trainer.train.model_loading import check_model_folder, count_parameters, load_model, load_tokenizer, model_shape, read_model_config
from cpt_trainer.train.retokenize import retokenize_corpus
from cpt_trainer.train.s3_staging import stage
from cpt_trainer.train.shards import Manifest, TokenStream, check_matches_tokenizer, read_manifest, split_documents
from cpt_trainer.train.tokenizer_extension import extend_vocabulary
from cpt_trainer.train.trainer import Trainer

logger = logging.getLogger("cpt_trainer.train")

_SAMPLE_DOCS = 200  # domain eval documents used to report chars/token around an extension


def run_train(config_path: str) -> int:
    """Entry point of `cpt-trainer train`; see the module docstring for exit codes."""
    from cpt_trainer.train.launcher import record_rank_error  # the error file `cpt-trainer launch` reads
    cfg = load_config(config_path, TrainerConfig)
    env = distributed.read_dist_env()
    _setup_logging(cfg, env)
    try:
        run = prepare(cfg, env)
    except torch.OutOfMemoryError as exc:
        logger.error("out of memory while loading the model: %s", str(exc).splitlines()[0])
        record_rank_error(f"out of memory while loading the model: {str(exc).splitlines()[0]}")
        return 1
    stop = {"requested": False}

    def request_stop(signum, _frame) -> None:
        logger.info("signal %d: stopping after this step with a checkpoint", signum)
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        outcome = run.trainer.train(lambda: stop["requested"])
    except torch.OutOfMemoryError as exc:
        message = (
            f"out of memory in training (micro_batch_size {cfg.batch.micro_batch_size}, sequence_length "
            f"{cfg.data.sequence_length}): lower micro_batch_size, raise engine.zero_stage or enable "
            f"engine.gradient_checkpointing: {str(exc).splitlines()[0]}"
        )
        logger.error("%s", message)
        record_rank_error(message)
        return 1
    finally:
        run.close()
    logger.info("training %s at step %d", outcome, run.trainer.step)
    # Stopped (SIGTERM here, or on another rank: the stop is agreed across ranks) with a
    # checkpoint: 128 + SIGTERM, so ExitCode restart policies retry and the next attempt resumes.
    if outcome == "completed":
        return 0
    record_rank_error(f"stopped on SIGTERM at step {run.trainer.step} after a checkpoint")
    return 128 + signal.SIGTERM


def _setup_logging(cfg: TrainerConfig, env: distributed.DistEnv) -> None:
    logging.basicConfig(
        level=logging.INFO if env.is_main else logging.WARNING,
        format=f"%(asctime)s %(levelname)s %(name)s [{cfg.identity.namespace}/{cfg.identity.name} rank {env.rank}] %(message)s",
    )


def cache_dir(cfg: TrainerConfig) -> Path:
    """Local disk for staged models/corpora and checkpoint uploads (`CPT_CACHE_DIR` overrides)."""
    root = os.environ.get("CPT_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "cpt-cache")
    return _cache_subfolder(Path(root), f"{cfg.identity.namespace}/{cfg.identity.name}", "identity")


def _cache_subfolder(folder: Path, name: str, what: str) -> Path:
    """`folder/name` for a name from the config (identity, corpus, eval), refused when it leads outside `folder`."""
    try:
        return resolve_inside(folder, name)
    except PathOutsideFolder:
        raise TrainerInputError(f"{what} {name!r} would be a local path outside {folder}: refused") from None


def resolve_device(requested: str, env: distributed.DistEnv) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainerInputError("engine.device is cuda but no GPU is visible to this process")
    torch.cuda.set_device(env.local_rank)
    return torch.device("cuda", env.local_rank)


@dataclass
class CorpusData:
    name: str
    role: str
    weight: float
    manifest: Manifest


@dataclass
class TrainingRun:
    """A built trainer with what must be closed after it."""

    trainer: Trainer
    metrics: TrainerMetrics
    extension: dict = field(default_factory=dict)

    def close(self) -> None:
        self.metrics.close()
        # The process group is not destroyed here: a rank of a multi-process run ends through
        # distributed.leave (cpt_trainer.cli), which explains why.


def _load_corpus(uri: str, name: str, cache: Path, cfg: TrainerConfig, tokenizer) -> Manifest:
    folder = stage(uri, _cache_subfolder(cache / "corpora", name, "corpus name"), cfg.s3, f"corpus {name}")
    manifest = read_manifest(folder)
    check_matches_tokenizer(manifest, len(tokenizer), tokenizer.eos_token_id, f"corpus {name} ({uri})")
    return manifest


def _weights_dtype(cfg: TrainerConfig, kind: str, device: torch.device) -> torch.dtype:
    if device.type != "cuda" or cfg.model.dtype == "float32" or cfg.engine.precision == "fp32":
        return torch.float32
    if cfg.model.dtype == "bfloat16":
        return torch.bfloat16
    # auto: fp32 master weights under bf16 autocast (torch path, ZeRO-0); bf16 for ZeRO 1-3.
    return torch.bfloat16 if kind == "deepspeed" and cfg.engine.zero_stage > 0 else torch.float32


def prepare(cfg: TrainerConfig, env: distributed.DistEnv | None = None) -> TrainingRun:
    """Validate inputs, then build model, engine, data, evaluation, checkpoints, metrics and the Trainer."""
    env = env or distributed.read_dist_env()
    device = resolve_device(cfg.engine.device, env)
    cache = cache_dir(cfg)
    # ---- cheap checks: nothing heavy is loaded until every input has been looked at
    model_dir = stage(cfg.model.uri, cache / "model", cfg.s3, "model path")
    check_model_folder(model_dir, cfg.model.uri)
    tok_dir = stage(cfg.model.tokenizer_uri, cache / "tokenizer", cfg.s3, "tokenizer path") if cfg.model.tokenizer_uri else model_dir
    tokenizer = load_tokenizer(tok_dir, cfg.model.tokenizer_uri or cfg.model.uri)
    corpora = [CorpusData(c.name, c.role, c.weight, _load_corpus(c.uri, c.name, cache, cfg, tokenizer)) for c in cfg.data.corpora]
    _check_roles(cfg, corpora)
    general_specs = _general_eval_inputs(cfg, corpora, cache, tokenizer)
    try:
        benchmarks = _benchmarks(cfg, cache, env)
    except BenchmarkUnavailable as exc:
        if env.is_main:
            write_termination_message(cfg.termination_message_path, json.dumps(exc.report()))
        raise
    parameters = count_parameters(model_dir)
    _check_sequence_length(cfg, model_dir)
    kind = choose_engine_kind(cfg, device, parameters)
    try:
        accumulation = gradient_accumulation_steps(cfg, env.world_size)
    except ValueError as exc:
        raise TrainerInputError(str(exc)) from None
    if device.type == "cuda":
        _check_memory_fit(cfg, kind, parameters, env, device)
    logger.info("engine %s on %s, %d parameters, world size %d, accumulation %d", kind, device, parameters, env.world_size, accumulation)
    # ---- heavy part
    distributed.init_process_group(env, device)
    torch.manual_seed(cfg.data.seed)
    model = load_model(model_dir, _weights_dtype(cfg, kind, device), device if kind == "torch" else torch.device("cpu"))
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise TrainerInputError(f"tokenizer has {len(tokenizer)} tokens, the model's embedding only {model.get_input_embeddings().weight.shape[0]} rows")
    extension: dict = {}
    if cfg.tokenizer_extension.tokens:
        corpora, general_specs, extension = _extend(cfg, model, tok_dir, tokenizer, corpora, general_specs, cache, env)
    shape = model_shape(model)
    engine = build_engine(kind, model, cfg, env, device, accumulation)
    L = cfg.data.sequence_length
    try:
        mix = MixedSequenceStream(
            [MixSource(c.name, c.role, c.weight, TokenStream(c.manifest, "train")) for c in corpora],
            L, cfg.data.seed, cfg.data.alpha, cfg.data.curriculum,
        )
        limit = cfg.eval.max_batches * cfg.batch.micro_batch_size
        domain_sets = [PerplexitySet(c.name, eval_sequences(TokenStream(c.manifest, "eval"), L, limit))
                       for c in corpora if c.role == "domain" and c.manifest.tokens("eval") > 0]
        general_sets = [PerplexitySet(n, eval_sequences(TokenStream(m, "eval"), L, limit)) for n, m in general_specs]
    except ValueError as exc:
        raise TrainerInputError(str(exc)) from None
    evaluator = Evaluator(domain_sets, general_sets, benchmarks, cfg.batch.micro_batch_size, env, device, L)
    checkpoints = CheckpointManager(cfg.checkpoint, cfg.s3, cache, env, cfg.batch.total_steps, cfg.attempt)
    metrics = TrainerMetrics(cfg.identity)
    if env.is_main:
        metrics.serve(cfg.metrics.port)
    peak = device_peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else 0.0
    trainer = Trainer(cfg, engine, tokenizer, mix, evaluator, checkpoints, metrics, env, device,
                      flops_per_token(shape["parameters"], shape["layers"], shape["hidden"], L), peak)
    trainer.extension_report = extension
    try:
        latest = checkpoints.resume_target()  # with checkpoint.resume_step: the rollback (see checkpointing.py)
    except TrainerInputError:
        metrics.close()
        raise
    if latest is not None:
        try:
            trainer.resume(latest)
        except ValueError as exc:
            metrics.close()
            raise TrainerInputError(f"cannot resume from {latest}: {exc}") from None
    return TrainingRun(trainer, metrics, extension)


def _check_roles(cfg: TrainerConfig, corpora: list[CorpusData]) -> None:
    roles = {c.role for c in corpora}
    alphas = [cfg.data.alpha] + [p.alpha for p in cfg.data.curriculum]
    if any(a > 0 for a in alphas) and "domain" not in roles:
        raise TrainerInputError("data.alpha > 0 but no corpus has role domain")
    if any(a < 1 for a in alphas) and "replay" not in roles:
        raise TrainerInputError("data.alpha < 1 but no corpus has role replay")
    if not any(c.role == "domain" and c.manifest.tokens("eval") > 0 for c in corpora) and "domain" in roles:
        raise TrainerInputError("no domain corpus has an eval split: domain perplexity cannot be measured")


def _general_eval_inputs(cfg: TrainerConfig, corpora: list[CorpusData], cache: Path, tokenizer) -> list[tuple[str, Manifest]]:
    """(name, manifest) of each perplexity general eval; default: the replay corpora's eval splits."""
    if not cfg.eval.general:
        return [(c.name, c.manifest) for c in corpora if c.role == "replay" and c.manifest.tokens("eval") > 0]
    specs = []
    for g in cfg.eval.general:
        if g.kind == "perplexity":
            manifest = _load_corpus(g.uri, f"general-{g.name}", cache, cfg, tokenizer)
            if manifest.tokens("eval") == 0:
                raise TrainerInputError(f"eval.general {g.name}: {g.uri} has no eval split")
            specs.append((g.name, manifest))
    return specs


def _benchmarks(cfg: TrainerConfig, cache: Path, env: distributed.DistEnv) -> list[Benchmark]:
    """The lm_eval general evals, their task files staged and checked before the model loads."""
    out = []
    for g in cfg.eval.general:
        if g.kind != "lm_eval":
            continue
        folder = _cache_subfolder(cache / "benchmarks", g.name, "eval name")
        try:
            path = stage(g.uri, folder / "staged", cfg.s3, f"eval.general {g.name}: task file")
        except TrainerInputError as exc:
            raise BenchmarkUnavailable(g.name, str(exc)) from None
        out.append(load_benchmark(g.name, path, g.limit, folder / f"task-rank-{env.rank:05d}"))
    return out


def _check_sequence_length(cfg: TrainerConfig, model_dir: Path) -> None:
    """Refuse sequences longer than the model's positions (RoPE past them is untrained, learned ones index out)."""
    limit = read_model_config(model_dir).get("max_position_embeddings")
    if limit is not None and cfg.data.sequence_length > int(limit):
        raise TrainerInputError(
            f"data.sequence_length {cfg.data.sequence_length} exceeds the model's max_position_embeddings {limit} "
            f"({cfg.model.uri}): lower data.sequence_length to at most {limit}"
        )


def _check_memory_fit(cfg: TrainerConfig, kind: str, parameters: int, env: distributed.DistEnv, device: torch.device) -> None:
    need = training_state_bytes_per_gpu(kind, cfg, parameters, env.world_size)
    have = torch.cuda.get_device_properties(device).total_memory
    if need > 0.9 * have:
        raise TrainerInputError(
            f"the training state needs {need / 2**30:.1f} GiB per GPU before activations, the GPU has "
            f"{have / 2**30:.1f} GiB: use engine.kind deepspeed with a higher zero_stage, offload, or more GPUs"
        )


def _extend(cfg, model, tok_dir, tokenizer, corpora, general_specs, cache, env):
    """Extend the vocabulary, then re-tokenize every corpus with the extended tokenizer."""
    base = load_tokenizer(tok_dir, str(tok_dir))
    samples: list[str] = []
    for c in corpora:
        if c.role == "domain" and c.manifest.tokens("eval") and len(samples) < _SAMPLE_DOCS:
            for doc in split_documents(TokenStream(c.manifest, "eval"), c.manifest.eos_id):
                samples.append(base.decode(doc.tolist()))
                if len(samples) >= _SAMPLE_DOCS:
                    break
    report = extend_vocabulary(model, tokenizer, cfg.tokenizer_extension.tokens, samples)
    # Lands in every checkpoint's metrics.json: token counts before/after on the domain eval
    # sample and `warning` (set when the extension did not reduce the domain token count).
    extension = report.to_dict()
    if not report.added:
        return corpora, general_specs, extension
    out = cache / "retokenized"

    def redo(name: str, manifest: Manifest) -> Manifest:
        folder = _cache_subfolder(out, name, "corpus name")
        if env.is_local_main:
            retokenize_corpus(manifest, base, tokenizer, folder)
        distributed.barrier()
        return read_manifest(folder)

    redone = {id(c.manifest): redo(c.name, c.manifest) for c in corpora}
    corpora = [CorpusData(c.name, c.role, c.weight, redone[id(c.manifest)]) for c in corpora]
    general_specs = [(n, redone.get(id(m)) or redo(f"general-{n}", m)) for n, m in general_specs]
    return corpora, general_specs, extension
