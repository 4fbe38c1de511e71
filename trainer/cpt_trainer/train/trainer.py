"""The training loop, in named steps: `batch_generator`, `forward_backward_step`, `train_step`,
`evaluate`, `save_checkpoint`, `train`; the resumable state is `state_dict()`.

Global batch of step s = sequences [s*G, (s+1)*G) of the mixed stream; rank r trains on its
contiguous G/W of them, in G/(W*micro) micro-batches. The stream's counters, the schedule's
counter, the step and RNG states are all in the checkpoint, so a resumed run sees exactly
the sequences an uninterrupted one would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from cpt_trainer.contract.config import TrainerConfig
from cpt_trainer.contract.metrics import CHECKPOINT_METRICS_FILE
from cpt_trainer.train.checkpointing import CheckpointManager, _write_json, checkpoint_step
from cpt_trainer.train.data_mixing import MixedSequenceStream
from cpt_trainer.train.distributed import DistEnv, all_reduce_sum, any_rank
from cpt_trainer.train.evaluation import EvalResult, Evaluator, general_regression
from cpt_trainer.train.flops import mfu
from cpt_trainer.train.lr_schedule import LRSchedule
from cpt_trainer.train.metrics_exporter import TrainerMetrics
from cpt_trainer.train.rng_state import restore_rng_state, save_rng_state

logger = logging.getLogger(__name__)

DATA_POSITION_FILE = "data_position.json"
SCHEDULER_FILE = "scheduler.json"
TRAINER_STATE_FILE = "trainer_state.json"
RNG_DIR = "rng"


@dataclass
class StepStats:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def format_eta(seconds: float | None) -> str:
    """`1h02m`, `3m05s`, `42s`; `?` when unknown."""
    if seconds is None:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _eval_from_dict(data: dict | None) -> EvalResult | None:
    if not data:
        return None
    return EvalResult(step=int(data["step"]), domain_perplexity=data.get("domain_perplexity"),
                      general=dict(data.get("general", {})), higher_is_better=dict(data.get("higher_is_better", {})),
                      stderr=dict(data.get("stderr", {})))


def _eval_to_dict(result: EvalResult | None) -> dict | None:
    if result is None:
        return None
    return {**result.to_dict(), "higher_is_better": dict(result.higher_is_better)}


class Trainer:
    def __init__(
        self,
        cfg: TrainerConfig,
        engine,
        tokenizer,
        mix: MixedSequenceStream,
        evaluator: Evaluator,
        checkpoints: CheckpointManager,
        metrics: TrainerMetrics,
        dist: DistEnv,
        device: torch.device,
        flops_per_token: float,
        peak_flops: float,
    ):
        self.cfg = cfg
        self.engine = engine
        self.tokenizer = tokenizer
        self.mix = mix
        self.evaluator = evaluator
        self.checkpoints = checkpoints
        self.metrics = metrics
        self.dist = dist
        self.device = device
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.total_steps = cfg.batch.total_steps
        self.schedule = LRSchedule(cfg.optim, self.total_steps)
        micro = cfg.batch.micro_batch_size
        self.sequences_per_rank = cfg.batch.global_batch_size // dist.world_size
        self.accumulation = self.sequences_per_rank // micro
        self.tokens_per_step = cfg.batch.global_batch_size * cfg.data.sequence_length
        self.step = 0
        self.tokens_seen = 0
        self._progress_from: tuple[int, float] | None = None  # (step, perf_counter) when this process began training
        self.baseline: EvalResult | None = None
        self.last_eval: EvalResult | None = None
        self.last_stats: StepStats | None = None
        self.last_checkpoint: str | None = None
        self.extension_report: dict = {}  # tokenizer extension (chars/token before and after), when configured
        metrics.set_total_steps(self.total_steps)

    # ------------------------------------------------------------------ the step

    def batch_generator(self) -> Iterator[torch.Tensor]:
        """This rank's micro-batches of the next optimizer step (the stream advances by one global batch)."""
        plan = self.mix.next_sequences(self.cfg.batch.global_batch_size, self.step)
        mine = plan[self.dist.rank * self.sequences_per_rank : (self.dist.rank + 1) * self.sequences_per_rank]
        tokens = torch.from_numpy(self.mix.read(mine))
        if self.device.type == "cuda":
            tokens = tokens.pin_memory()
        micro = self.cfg.batch.micro_batch_size
        for i in range(self.accumulation):
            yield tokens[i * micro : (i + 1) * micro].to(self.device, non_blocking=True)

    def forward_backward_step(self, input_ids: torch.Tensor, last_micro: bool) -> torch.Tensor:
        return self.engine.forward_backward(input_ids, last_micro)

    def train_step(self) -> StepStats:
        """One optimizer update over one global batch."""
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)
        for i, input_ids in enumerate(self.batch_generator()):
            loss_sum += self.forward_backward_step(input_ids, last_micro=i == self.accumulation - 1).float()
        lr = self.schedule.next_lr()
        grad_norm = self.engine.optimizer_step(lr)
        self.schedule.advance()
        totals = all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(self.accumulation), device=self.device)]))
        loss = float(totals[0] / totals[1])  # one host sync per step
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        stats = StepStats(self.step, loss, lr, float(grad_norm), self.tokens_per_step, time.perf_counter() - start)
        self.last_stats = stats
        utilisation = mfu(stats.tokens_per_second, self.flops_per_token, self.peak_flops, self.dist.world_size)
        self.metrics.record_step(self.step, loss, lr, stats.tokens_per_second, utilisation)
        self.metrics.add_tokens(self.tokens_per_step)
        if self._progress_from is None:
            self._progress_from = (self.step - 1, start)
        if self.dist.is_main and (self.step == 1 or self.step % 10 == 0 or self.step == self.total_steps):
            logger.info("step %d/%d loss %.4f lr %.3e grad_norm %.3f tokens/s %.0f mfu %.3f tokens seen %d eta %s",
                        self.step, self.total_steps, loss, lr, stats.grad_norm, stats.tokens_per_second, utilisation,
                        self.tokens_seen, format_eta(self.eta_seconds()))
        return stats

    def eta_seconds(self) -> float | None:
        """Remaining steps x this process's mean wall time per step so far (evaluations and saves
        included, so the estimate holds for the run as it goes); None before the first step."""
        if self._progress_from is None or self.step <= self._progress_from[0]:
            return None
        first_step, began = self._progress_from
        per_step = (time.perf_counter() - began) / (self.step - first_step)
        return per_step * (self.total_steps - self.step)

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> EvalResult:
        result = self.evaluator.evaluate(self.step, self.engine.eval_loss, self._eval_logits, self.tokenizer)
        if self.baseline is None:
            self.baseline = result
            logger.info("baseline (step %d): domain perplexity %s, general %s", self.step, result.domain_perplexity, result.general)
        self.last_eval = result
        regression = self.regression(result)
        self._publish_eval(result, regression)
        if self.dist.is_main:
            logger.info("eval step %d: domain perplexity %s, general %s, regression %s",
                        self.step, result.domain_perplexity, result.general, regression)
            if regression is not None and regression > self.cfg.eval.forgetting_threshold:
                logger.warning("general regression %.4f exceeds the forgetting threshold %.4f",
                               regression, self.cfg.eval.forgetting_threshold)
        return result

    def regression(self, result: EvalResult | None) -> float | None:
        """The run's general regression at `result`, with the config's stderr rule."""
        if result is None:
            return None
        return general_regression(result, self.baseline, self.cfg.eval.min_standard_errors)

    @torch.no_grad()
    def _eval_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of the (unwrapped) model in eval mode, for benchmarks."""
        model = self.engine.model
        model.eval()
        try:
            return model(input_ids=input_ids, use_cache=False).logits
        finally:
            model.train()

    def _publish_eval(self, result: EvalResult, regression: float | None) -> None:
        """The evaluation's gauges: scores with their stderr and direction, and the baseline's."""
        base = self.baseline
        self.metrics.record_eval(result.step, result.domain_perplexity, result.general, base.general, regression,
                                 result.stderr, base.stderr, result.higher_is_better)

    def should_evaluate(self) -> bool:
        # Every checkpoint carries its own evaluation, so checkpoint steps are evaluated too.
        return self.step % self.cfg.eval.interval == 0 or self.checkpoints.should_save(self.step)

    # ------------------------------------------------------------------ state and checkpoints

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "sequence_length": self.cfg.data.sequence_length,
            "global_batch_size": self.cfg.batch.global_batch_size,
            "world_size": self.dist.world_size,
            "engine": self.engine.kind,
            "zero_stage": getattr(self.engine, "zero_stage", None),  # None: the torch engine (no ZeRO)
            "baseline": _eval_to_dict(self.baseline),
            "last_eval": _eval_to_dict(self.last_eval),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("sequence_length", "global_batch_size"):
            if state[key] != self.state_dict()[key]:
                raise ValueError(f"checkpoint was written with {key} {state[key]}, this run has {self.state_dict()[key]}")
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.baseline = _eval_from_dict(state.get("baseline"))
        self.last_eval = _eval_from_dict(state.get("last_eval"))

    def checkpoint_metrics(self) -> dict:
        """The checkpoint's own `metrics.json`: scores survive a lost scrape or an operator restart."""
        stats = self.last_stats
        evaluated = self.last_eval
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_loss": stats.loss if stats else None,
            "learning_rate": stats.lr if stats else None,
            "eval_step": evaluated.step if evaluated else None,
            "domain_perplexity": evaluated.domain_perplexity if evaluated else None,
            "general_scores": dict(evaluated.general) if evaluated else {},
            "general_stderr": dict(evaluated.stderr) if evaluated else {},
            "general_higher_is_better": dict(evaluated.higher_is_better) if evaluated else {},
            "baseline_domain_perplexity": self.baseline.domain_perplexity if self.baseline else None,
            "baseline_general_scores": dict(self.baseline.general) if self.baseline else {},
            "baseline_general_stderr": dict(self.baseline.stderr) if self.baseline else {},
            "general_regression": self.regression(evaluated),
            "min_standard_errors": self.cfg.eval.min_standard_errors,
            "forgetting_threshold": self.cfg.eval.forgetting_threshold,
            "attempt": self.cfg.attempt,
            **({"tokenizer_extension": self.extension_report} if self.extension_report else {}),
        }

    def _write_checkpoint(self, folder: Path) -> None:
        self.engine.save(folder, self.tokenizer)
        (folder / RNG_DIR).mkdir(exist_ok=True)
        save_rng_state(folder / RNG_DIR / f"rank-{self.dist.rank:05d}.pt")
        if self.dist.is_main:
            _write_json(folder / DATA_POSITION_FILE, self.mix.state_dict())
            _write_json(folder / SCHEDULER_FILE, self.schedule.state_dict())
            _write_json(folder / TRAINER_STATE_FILE, self.state_dict())

    def save_checkpoint(self) -> None:
        try:
            metrics = self.checkpoint_metrics()
            self.last_checkpoint = self.checkpoints.save(self.step, self._write_checkpoint, metrics)
            self.metrics.record_checkpoint(self.step)
            if not self.checkpoints.remote:
                self.metrics.list_checkpoint(self.step, metrics)
        except Exception:  # a failed upload must not end the run; the operator alerts on the counter
            logger.exception("checkpoint at step %d failed", self.step)
            self.metrics.count_checkpoint_failure()
        self.apply_retain_list()

    def apply_retain_list(self) -> None:
        """Carry out the operator's rotation on a volume (PVC storage; S3 is rotated by the operator)."""
        try:
            for name in self.checkpoints.apply_retain_list():
                step = checkpoint_step(name)
                if step is not None:
                    self.metrics.unlist_checkpoint(step)
        except OSError:
            logger.exception("applying the retain list failed; retried after the next save")

    def list_volume_checkpoints(self) -> None:
        """Export the volume's complete checkpoints (the operator's view of a PVC it cannot mount)."""
        if self.checkpoints.remote or not self.dist.is_main:
            return
        import json

        for name in self.checkpoints.complete_local():
            step = checkpoint_step(name)
            path = self.checkpoints.root / name / CHECKPOINT_METRICS_FILE
            try:
                metrics = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            except (OSError, ValueError):
                metrics = {}
            if step is not None:
                self.metrics.list_checkpoint(step, metrics)

    def check_resumable(self, state: dict, folder: Path) -> None:
        """Refuse (ValueError, one line) a checkpoint this run's engine cannot load, before loading anything."""
        fresh = f"start a new run with model.uri {folder / 'model'} (weights only; optimizer state and schedule start fresh)"
        written_by = state.get("engine")
        if written_by is not None and written_by != self.engine.kind:
            # The optimizer state differs in layout (optimizer.pt vs DeepSpeed's engine/ shards):
            # refused before anything is loaded, rather than failing inside the engine.
            raise ValueError(
                f"it was written by engine {written_by}, this run uses engine {self.engine.kind}: set engine.kind "
                f"{written_by} to resume it, or {fresh}"
            )
        if self.engine.kind != "deepspeed":
            # The torch engine resumes on any world size: rank 0 saves the whole model and optimizer
            # state, every rank loads it, and the data position, schedule and step are global (the
            # module docstring). Only a rank without an RNG file keeps the seed's RNG state (it
            # matters for dropout only), and the reduction order changes float rounding: allowed.
            return
        # DeepSpeed's checkpoint holds ZeRO partitions, one per rank of the stage it was written
        # with: another stage or world size ends in DeepSpeed's own assertion, so refuse it here.
        stage, ranks = state.get("zero_stage"), state.get("world_size")
        this_stage, this_ranks = getattr(self.engine, "zero_stage", None), self.dist.world_size
        stage_differs = stage is not None and stage != this_stage
        if stage_differs or (ranks is not None and ranks != this_ranks):
            then = f"ZeRO stage {stage if stage is not None else '?'}, world size {ranks}"
            raise ValueError(
                f"it was written by DeepSpeed {then}, this run is ZeRO stage {this_stage}, world size {this_ranks} "
                f"(DeepSpeed cannot repartition its optimizer state): resume it with engine.zero_stage "
                f"{stage if stage is not None else this_stage} and world size {ranks} (workers x GPUs per worker), or {fresh}"
            )

    def resume(self, name: str) -> None:
        import json

        folder = self.checkpoints.fetch(name)
        state = json.loads((folder / TRAINER_STATE_FILE).read_text())
        self.check_resumable(state, folder)
        self.engine.load(folder)
        self.mix.load_state_dict(json.loads((folder / DATA_POSITION_FILE).read_text()))
        self.schedule.load_state_dict(json.loads((folder / SCHEDULER_FILE).read_text()))
        self.load_state_dict(state)
        rng_file = folder / RNG_DIR / f"rank-{self.dist.rank:05d}.pt"
        if rng_file.is_file():
            restore_rng_state(rng_file)  # plain data only (weights_only); an unloadable file is a warning
        self.last_checkpoint = name
        self.metrics.record_checkpoint(self.step)
        self.metrics.add_tokens(self.tokens_seen)
        if self.baseline is not None:
            last = self.last_eval or self.baseline
            self._publish_eval(last, self.regression(last))
        logger.info("resuming from checkpoint %s (step %d, %d tokens seen)", name, self.step, self.tokens_seen)

    # ------------------------------------------------------------------ the run

    def train(self, stop_requested: Callable[[], bool] = lambda: False) -> str:
        """Run to `total_steps` (or a stop request); returns why it ended: "completed" or "stopped"."""
        self.list_volume_checkpoints()
        if self.baseline is None:
            self.evaluate()  # before the first update
        elif self.should_evaluate() and (self.last_eval is None or self.last_eval.step != self.step):
            # Resumed from a stop's checkpoint that skipped this step's evaluation (below): run it
            # now, where an uninterrupted run did (same weights; the RNG state is the pre-eval one).
            # That checkpoint's metrics.json keeps the evaluation before it (its eval_step says which).
            logger.info("evaluating step %d, skipped by the stop that saved it", self.step)
            self.evaluate()
        while self.step < self.total_steps:
            self.train_step()
            # A stop (SIGTERM: preemption) saves at once, before an evaluation due at this step, so
            # the evaluation cannot eat the grace period's share for the save; the resumed run
            # evaluates this step first (above). Not at the last step: the final checkpoint must
            # carry the final evaluation, and the run ends right after anyway.
            stop = any_rank(stop_requested(), self.device)
            if stop and self.step < self.total_steps:
                self.save_checkpoint()
                logger.info("stopped at step %d on request", self.step)
                return "stopped"
            if self.should_evaluate():
                self.evaluate()
                if not self.checkpoints.should_save(self.step):
                    self.apply_retain_list()  # the operator's newest decision, without waiting for a save
            if self.checkpoints.should_save(self.step):
                self.save_checkpoint()
        return "completed"
