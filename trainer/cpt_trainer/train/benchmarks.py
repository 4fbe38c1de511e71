"""Multiple-choice benchmarks scored by lm-evaluation-harness on the trainer's live model.

Task data never comes from a hub. The tenant's task file (a .jsonl or .parquet file, or a
folder holding exactly one, staged like a corpus) holds one item per row in the declared
`multiple_choice` schema: `{"question": str, "choices": [str, ...], "answer": int}` (the index
of the right choice). The trainer checks every row of the first `limit` (the fixed subset
scored at every evaluation), writes them as JSON lines into its cache, and builds an
lm_eval `ConfigurableTask` over that local file (`output_type: multiple_choice`,
`doc_to_text: question`, `doc_to_choice: choices`, `doc_to_target: answer`). Each evaluation
runs `lm_eval.evaluator.evaluate` with `TrainerLM`, an lm_eval `LM` whose log-likelihoods come
from the trainer's model; the harness builds the requests (context = question, continuation =
" " + choice), picks the choice with the highest log-likelihood and reports `acc` (0-1, higher
is better) and `acc_stderr`.

Every rank scores every item with the same forward passes (ZeRO-3 gathers parameters
collectively, so ranks must run the same forwards); the result is the same on every rank.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cpt_trainer.contract import task_file
from cpt_trainer.contract.task_file import ChoiceItem
from cpt_trainer.train.errors import TrainerInputError

logger = logging.getLogger(__name__)

# (input_ids (b, n)) -> logits (b, n, vocab)
LogitsFn = Callable[[torch.Tensor], torch.Tensor]
BATCH = 16  # sequences per forward pass in a benchmark evaluation


@dataclass(frozen=True)
class BenchmarkScore:
    accuracy: float
    stderr: float
    items: int


class BenchmarkUnavailable(TrainerInputError):
    """A configured benchmark that cannot run; the operator shows it as EvaluationUnavailable."""

    def __init__(self, eval_name: str, message: str):
        super().__init__(message)
        self.eval_name = eval_name

    def report(self) -> dict:
        """The termination message the operator reads (`decide/trainer_report.py`)."""
        return {"reason": "EvaluationUnavailable", "eval": self.eval_name, "message": str(self)}


def read_task_file(path: Path, eval_name: str, limit: int) -> list[ChoiceItem]:
    """The checked items of a task file (see `cpt_trainer.contract.task_file`)."""
    try:
        return task_file.read_task_file(path, f"eval.general {eval_name}", limit)
    except task_file.TaskFileError as exc:
        raise BenchmarkUnavailable(eval_name, str(exc)) from None


def require_lm_eval(eval_name: str) -> None:
    try:
        import lm_eval.evaluator  # noqa: F401
    except ImportError:
        raise BenchmarkUnavailable(
            eval_name, f"eval.general {eval_name}: lm-evaluation-harness (lm_eval) is not installed in the trainer image"
        ) from None


def _trainer_lm_class():
    from lm_eval.api.model import LM

    class TrainerLM(LM):
        """lm_eval LM over the trainer's live model: log-likelihoods from a logits function."""

        def __init__(self, logits_fn: LogitsFn, tokenizer, device: torch.device, max_length: int):
            super().__init__()
            self.logits_fn, self.tokenizer, self._device, self.max_length = logits_fn, tokenizer, device, max_length

        @torch.no_grad()
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            """(sum log p(continuation | context), greedy) per request, BATCH sequences per forward:
            right-padded, so a causal model's logits at the real positions are unchanged."""
            encoded = []
            for request in requests:
                context, continuation = request.args
                ctx = self.tokenizer(context, add_special_tokens=False)["input_ids"]
                cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
                if self.tokenizer.bos_token_id is not None:
                    ctx = [self.tokenizer.bos_token_id] + ctx
                ids = (ctx + cont)[-(self.max_length + 1):]
                encoded.append((ids, len(cont)))
            out = []
            for start in range(0, len(encoded), BATCH):
                chunk = encoded[start : start + BATCH]
                width = max(len(ids) - 1 for ids, _ in chunk)
                batch = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, (ids, _) in enumerate(chunk):
                    batch[row, : len(ids) - 1] = torch.tensor(ids[:-1])
                logp_all = torch.log_softmax(self.logits_fn(batch.to(self._device)).float(), dim=-1)
                for row, (ids, n) in enumerate(chunk):
                    end = len(ids) - 1
                    logp = logp_all[row, end - n : end]
                    target = torch.tensor(ids[-n:], device=self._device)
                    token_lp = logp.gather(1, target[:, None])[:, 0]
                    out.append((float(token_lp.sum()), bool((logp.argmax(-1) == target).all())))
            return out

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("only multiple-choice (loglikelihood) tasks are supported")

        def generate_until(self, requests, disable_tqdm: bool = False):
            raise NotImplementedError("only multiple-choice (loglikelihood) tasks are supported")

    return TrainerLM


class Benchmark:
    """One configured multiple-choice benchmark: its fixed items as an lm_eval task."""

    def __init__(self, name: str, items: list[ChoiceItem], work_dir: Path):
        self.name = name
        self.items = items
        work_dir.mkdir(parents=True, exist_ok=True)
        data = work_dir / "items.jsonl"
        data.write_text(
            "".join(json.dumps({"question": i.question, "choices": list(i.choices), "answer": i.answer}) + "\n" for i in items),
            encoding="utf-8",
        )
        from lm_eval.api.task import ConfigurableTask

        self.task = ConfigurableTask(config={
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(work_dir / "datasets")},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        })  # fmt: skip

    def score(self, logits_fn: LogitsFn, tokenizer, device: torch.device, max_length: int) -> BenchmarkScore:
        """Accuracy (0-1, higher is better) and its standard error, through lm_eval's evaluator."""
        from lm_eval import evaluator

        lm = _trainer_lm_class()(logits_fn, tokenizer, device, max_length)
        out = evaluator.evaluate(lm=lm, task_dict={self.name: self.task}, verbosity="WARNING")
        metrics = out["results"][self.name]
        stderr = metrics.get("acc_stderr,none")
        stderr = float(stderr) if isinstance(stderr, (int, float)) else math.nan
        return BenchmarkScore(float(metrics["acc,none"]), stderr, int(out.get("n-samples", {}).get(self.name, {}).get("effective", len(self.items))))


def load_benchmark(name: str, path: Path, limit: int, work_dir: Path) -> Benchmark:
    """Check the task file and build its lm_eval task (TrainerInputError naming the eval on any fault)."""
    require_lm_eval(name)
    items = read_task_file(path, name, limit)
    try:
        return Benchmark(name, items, work_dir)
    except Exception as exc:  # noqa: BLE001 - the harness refusing the task is the tenant's to fix
        raise BenchmarkUnavailable(name, f"eval.general {name}: lm-evaluation-harness cannot build the task: {exc}") from None
