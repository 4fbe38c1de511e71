"""Benchmark: the cost of one benchmark evaluation (lm-evaluation-harness over the trainer's
model) on CPU, for the local demo's model shape, against one optimizer step of the same model.

    .venv/bin/python bench/bench_benchmark_eval.py [--items 200] [--repeats 5] [--threads 1]

Model: a tiny Llama as local mode builds it (`examples/local/bootstrap/base-model.yaml`:
hidden 96, 3 layers, 4 heads, intermediate 256, byte-level BPE of 2,048 tokens trained on the
shipped general text), random weights (the cost does not depend on them). Task: the cloze
benchmark built from shipped text (`cpt_trainer.cloze_task`), 4 choices per item. A training
step: micro-batch 16 x 128 tokens, forward + backward + AdamW, as the demo's run. Prints one
JSON line: seconds per evaluation (median of `repeats`), per item, and the ratio to a step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM

    from cpt_trainer.cloze_task import cloze_items
    from cpt_trainer.contract.task_file import ChoiceItem
    from cpt_trainer.shipped_text import general_documents, legal_documents
    from cpt_trainer.tinymodel import build_tiny_llama, train_tokenizer
    from cpt_trainer.train.benchmarks import Benchmark

    general, legal = general_documents(), legal_documents(limit=300)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        tokenizer = train_tokenizer(general[:400] + legal, out / "model", vocab_size=2048)
        build_tiny_llama(len(tokenizer), out / "model", hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256,
                         max_position_embeddings=256)  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(str(out / "model"), local_files_only=True)
        rows = cloze_items(general[400:], legal, count=args.items)
        items = [ChoiceItem(r["question"], tuple(r["choices"]), r["answer"]) for r in rows]
        bench = Benchmark("cloze", items, out / "work")

        def logits(ids: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids, use_cache=False).logits

        model.eval()
        bench.score(logits, tokenizer, torch.device("cpu"), 256)  # warm-up
        evals = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            bench.score(logits, tokenizer, torch.device("cpu"), 256)
            evals.append(time.perf_counter() - start)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, len(tokenizer), (16, 128))
        steps = []
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if i:
                steps.append(time.perf_counter() - start)
    per_eval, per_step = statistics.median(evals), statistics.median(steps)
    print(json.dumps({
        "items": len(items), "choices": 4, "threads": args.threads, "seconds_per_eval": round(per_eval, 3),
        "ms_per_item": round(1000 * per_eval / len(items), 2), "seconds_per_train_step": round(per_step, 3),
        "eval_in_train_steps": round(per_eval / per_step, 1), "evals": [round(x, 3) for x in evals],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
