#!/usr/bin/env python
"""CPU benchmark of the trainer's paths against the common HF Trainer recipe (not a test).

Tokens/s of real (non-padding) tokens on one machine, tiny Llama, the same shipped text for
every variant, run as interleaved repetitions (rep 1: every variant, rep 2: every variant, ...)
so a change of machine load hits every variant alike:

  hf-ckpt    the common recipe: HF Trainer + gradient checkpointing over interleaved documents,
             each cut into rows of at most `seq` tokens and padded (labels -100 on padding)
  hf         the same HF Trainer without gradient checkpointing
  torch-1    the trainer, engine torch, 1 process (packed sequences of the mixed stream)
  torch-2    the trainer, engine torch, 2 ranks (DDP over gloo, under torch's elastic agent)
  compiled-1 the trainer, engine torch + torch.compile (inductor's CPU backend), 1 process
  compiled-2 the same on 2 ranks
  zero1-2, zero2-2, zero3-2   the trainer, engine deepspeed ZeRO-1/2/3, 2 ranks (CPU accelerator, gloo)

Every variant uses the whole machine: a 1-process variant runs `--threads` torch threads, a
2-rank variant one thread per rank. Each variant runs `--warmup` unmeasured optimizer steps
(compilation, allocator) and then `--steps` measured ones of `--global` sequences each. With
`--eval`, the trainer variants also time one evaluation (the cloze benchmark through
lm-evaluation-harness plus the perplexity sets) after training: under ZeRO-3 every forward
gathers the sharded parameters.

    python bench/bench_trainer_cpu.py                       # everything, 3 repetitions
    python bench/bench_trainer_cpu.py --variants hf-ckpt,torch-1 --repeats 1 --steps 5   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    # name: (ranks, trainer engine settings or None for an HF Trainer variant)
    "hf-ckpt": (1, None),
    "hf": (1, None),
    "torch-1": (1, {"kind": "torch"}),
    "torch-2": (2, {"kind": "torch"}),
    "compiled-1": (1, {"kind": "torch", "compile": True}),
    "compiled-2": (2, {"kind": "torch", "compile": True}),
    "zero1-2": (2, {"kind": "deepspeed", "zero_stage": 1}),
    "zero2-2": (2, {"kind": "deepspeed", "zero_stage": 2}),
    "zero3-2": (2, {"kind": "deepspeed", "zero_stage": 3}),
}
BASELINE = "hf-ckpt"
SHAPE = dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352, max_position_embeddings=512)
VOCAB = 2048
ALPHA = 0.7  # domain share, as in the trainer's mix


def build_inputs(work: Path) -> dict:
    """Tokenizer + tiny Llama, the legal (domain) and general (replay) corpora as trainer shards,
    the same documents as token lists for the HF variants, and a cloze task file. Cached in `work`."""
    meta = work / "inputs.json"
    if meta.exists():
        return json.loads(meta.read_text())
    from transformers import AutoTokenizer

    from cpt_trainer.cloze_task import cloze_items, write_task_file
    from cpt_trainer.shipped_text import general_documents, legal_documents
    from cpt_trainer.tinymodel import build_tiny_llama, train_tokenizer
    from cpt_trainer.train.shards import write_corpus

    general = general_documents()
    texts = {"general": general[:600], "legal": legal_documents(limit=600)}
    model = work / "model"
    train_tokenizer(texts["general"] + texts["legal"], model, vocab_size=VOCAB)
    tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    build_tiny_llama(len(tokenizer), model, **SHAPE)
    out = {"model": str(model), "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    docs = {}
    for name, text in texts.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        cut = len(ids) // 10
        docs[name] = ids[cut:]
        out[name] = str(write_corpus(work / name, {"train": ids[cut:], "eval": ids[:cut]}, len(tokenizer),
                                     tokenizer.eos_token_id))  # fmt: skip
    (work / "documents.json").write_text(json.dumps(docs))
    out["documents"] = str(work / "documents.json")
    out["cloze"] = str(write_task_file(cloze_items(general[600:760], texts["legal"], count=100), work / "cloze.jsonl"))
    meta.write_text(json.dumps(out))
    return out


def trainer_config(inputs: dict, variant: str, args, work: Path) -> dict:
    engine = {"device": "cpu", "compile": False, "precision": "fp32", **VARIANTS[variant][1]}
    general = [{"name": "general", "uri": inputs["general"]},
               {"name": "cloze", "kind": "lm_eval", "uri": inputs["cloze"], "limit": 100}]  # fmt: skip
    return {
        "identity": {"namespace": "bench", "name": variant},
        "model": {"uri": inputs["model"]},
        "data": {"corpora": [{"name": "legal", "role": "domain", "weight": 1.0, "uri": inputs["legal"]},
                             {"name": "general", "role": "replay", "weight": 1.0, "uri": inputs["general"]}],
                 "alpha": ALPHA, "sequence_length": args.seq, "seed": 7},
        "optim": {"learning_rate": 1e-3, "min_learning_rate": 1e-4, "warmup_fraction": 0.01},
        "batch": {"micro_batch_size": args.micro, "global_batch_size": args.global_batch, "total_steps": 10_000},
        "engine": engine,
        "eval": {"interval": 10_000, "max_batches": 4, "general": general},
        "checkpoint": {"interval": 10_000, "uri": str(work / "checkpoints" / variant)},
        "metrics": {"port": 0},
    }  # fmt: skip


def run_trainer_variant(args, inputs: dict, work: Path) -> dict | None:
    """One rank of a trainer variant (under torch's elastic agent for 2 ranks). Rank 0 returns the result."""
    import torch

    from cpt_trainer.contract.config import TrainerConfig
    from cpt_trainer.train import distributed
    from cpt_trainer.train.main import prepare

    env = distributed.read_dist_env()
    cfg = TrainerConfig.model_validate(trainer_config(inputs, args.one, args, work))
    run = prepare(cfg, env)
    trainer = run.trainer
    for _ in range(args.warmup):
        trainer.train_step()
    distributed.barrier()
    start = time.perf_counter()
    losses = [trainer.train_step().loss for _ in range(args.steps)]
    distributed.barrier()
    seconds = time.perf_counter() - start
    eval_seconds = None
    if args.eval:
        start = time.perf_counter()
        trainer.evaluate()
        distributed.barrier()
        eval_seconds = time.perf_counter() - start
    result = {"variant": args.one, "engine": trainer.engine.kind, "ranks": env.world_size,
              "threads": torch.get_num_threads(), "tokens_per_second": args.steps * trainer.tokens_per_step / seconds,
              "padded_tokens_per_second": None,  # packed: no padding, the same as tokens_per_second
              "first_loss": losses[0], "last_loss": losses[-1], "eval_seconds": eval_seconds}  # fmt: skip
    return result if env.is_main else None


def hf_rows(inputs: dict, seq: int, seed: int = 0) -> list[list[int]]:
    """Documents of both corpora interleaved (domain with probability ALPHA, seeded), each with EOS
    and cut into rows of at most `seq` tokens: what `tokenizer(..., truncation + overflow)` gives."""
    docs = json.loads(Path(inputs["documents"]).read_text())
    rng = random.Random(seed)
    pools = {name: list(d) for name, d in docs.items()}
    for pool in pools.values():
        rng.shuffle(pool)
    rows: list[list[int]] = []
    while pools["legal"] or pools["general"]:
        name = "legal" if (rng.random() < ALPHA and pools["legal"]) or not pools["general"] else "general"
        doc = pools[name].pop() + [inputs["eos"]]
        rows.extend(doc[i : i + seq] for i in range(0, len(doc), seq))
    return rows


def run_hf_variant(args, inputs: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    torch.set_num_threads(args.threads)
    rows = hf_rows(inputs, args.seq)
    pad = inputs["pad"] if inputs["pad"] is not None else inputs["eos"]

    class Padded(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            ids = rows[i]
            n = len(ids)
            input_ids = torch.full((args.seq,), pad, dtype=torch.long)
            input_ids[:n] = torch.tensor(ids)
            labels = torch.full((args.seq,), -100, dtype=torch.long)
            labels[:n] = input_ids[:n]
            mask = torch.zeros(args.seq, dtype=torch.long)
            mask[:n] = 1
            return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}

    model = AutoModelForCausalLM.from_pretrained(inputs["model"], dtype=torch.float32, attn_implementation="sdpa")
    seen = {"real": 0, "rows": 0}

    def count(_module, _args, kwargs):  # every micro-batch passes the top-level forward once
        if model.training:
            seen["real"] += int(kwargs["attention_mask"].sum())
            seen["rows"] += int(kwargs["attention_mask"].shape[0])

    model.register_forward_pre_hook(count, with_kwargs=True)
    marks: list[tuple[float, int, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            marks.append((time.perf_counter(), seen["real"], seen["rows"]))

    steps = args.warmup + args.steps
    if steps * args.global_batch > len(rows):
        raise SystemExit(f"{len(rows)} rows are fewer than {steps} steps x {args.global_batch}: lower --steps")
    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.global_batch // args.micro, max_steps=steps,
        gradient_checkpointing=args.one == "hf-ckpt", learning_rate=1e-3, lr_scheduler_type="cosine",
        warmup_steps=1, weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0, optim="adamw_torch",
        logging_steps=10_000, save_strategy="no", report_to="none", dataloader_num_workers=0, use_cpu=True,
        seed=7,
    )  # fmt: skip
    Trainer(model=model, args=targs, train_dataset=Padded(), callbacks=[Clock()]).train()
    (t0, real0, rows0), (t1, real1, rows1) = marks[args.warmup - 1], marks[-1]
    return {"variant": args.one, "engine": "hf-trainer", "ranks": 1, "threads": torch.get_num_threads(),
            "tokens_per_second": (real1 - real0) / (t1 - t0),
            "padded_tokens_per_second": (rows1 - rows0) * args.seq / (t1 - t0), "eval_seconds": None}  # fmt: skip


def child(args) -> None:
    work = Path(args.work)
    inputs = json.loads((work / "inputs.json").read_text())
    if VARIANTS[args.one][1] is None:
        result = run_hf_variant(args, inputs)
    else:
        result = run_trainer_variant(args, inputs, work)
    if result is not None:
        print("BENCH_RESULT " + json.dumps(result), flush=True)
    if VARIANTS[args.one][1] is not None:
        from cpt_trainer.train import distributed

        distributed.leave(0)  # a rank of 2 leaves without torch's gloo teardown (docs/trainer.md)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(variant: str, args, work: Path) -> dict:
    ranks = VARIANTS[variant][0]
    threads = "1" if ranks > 1 else str(args.threads)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PET_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, CPT_CACHE_DIR=str(work / "cache"),
               TORCHINDUCTOR_CACHE_DIR=str(work / "inductor"), TOKENIZERS_PARALLELISM="false")  # fmt: skip
    flags = ["--one", variant, "--work", str(work), "--steps", str(args.steps), "--warmup", str(args.warmup),
             "--seq", str(args.seq), "--micro", str(args.micro), "--global", str(args.global_batch),
             "--threads", str(args.threads)] + (["--eval"] if args.eval else [])  # fmt: skip
    if ranks == 1:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        cmd = [sys.executable, __file__, *flags]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-addr",
               "127.0.0.1", "--master-port", str(_free_port()), __file__, *flags]  # fmt: skip
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"variant": variant, "error": f"timed out after {args.timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-12:]
        return {"variant": variant, "error": f"exit {proc.returncode}: " + " | ".join(tail)}
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    result["wall_seconds"] = time.perf_counter() - started
    return result


def summarise(reps: list[dict[str, dict]], variants: list[str]) -> list[dict]:
    rows = []
    for v in variants:
        runs = [r[v] for r in reps if "error" not in r.get(v, {"error": 1})]
        if not runs:
            rows.append({"variant": v, "error": next((r[v]["error"] for r in reps if v in r), "not run")})
            continue
        tps = [r["tokens_per_second"] for r in runs]
        ratios = [r[v]["tokens_per_second"] / r[BASELINE]["tokens_per_second"] for r in reps
                  if "error" not in r.get(v, {"error": 1}) and "error" not in r.get(BASELINE, {"error": 1})]  # fmt: skip
        evals = [r["eval_seconds"] for r in runs if r.get("eval_seconds") is not None]
        rows.append({"variant": v, "engine": runs[0]["engine"], "ranks": runs[0]["ranks"], "threads": runs[0]["threads"],
                     "tps": statistics.median(tps), "tps_min": min(tps), "tps_max": max(tps),
                     "padded": statistics.median(r["padded_tokens_per_second"] or r["tokens_per_second"] for r in runs),
                     "ratio": statistics.median(ratios) if ratios else None,
                     "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
                     "eval": statistics.median(evals) if evals else None, "n": len(runs),
                     "loss": (runs[-1].get("first_loss"), runs[-1].get("last_loss"))})  # fmt: skip
    return rows


def print_table(rows: list[dict], args) -> None:
    print(f"\ntiny Llama {SHAPE}, vocab {VOCAB}; seq {args.seq}, micro-batch {args.micro}, global batch "
          f"{args.global_batch}; {args.steps} measured steps after {args.warmup}; {args.repeats} interleaved repetitions\n")
    print(f"| variant | engine | ranks x threads | real tokens/s (median; min-max) | x {BASELINE} (median of per-repetition ratios; min-max) | padded tokens/s | one evaluation (s) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['variant']} | error | | | | | {r['error'][:300]} |")
            continue
        ratio = f"{r['ratio']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" if r["ratio"] is not None else "-"
        ev = f"{r['eval']:.2f}" if r["eval"] is not None else "-"
        print(f"| {r['variant']} | {r['engine']} | {r['ranks']} x {r['threads']} | {r['tps']:,.0f} ({r['tps_min']:,.0f}-{r['tps_max']:,.0f}) "
              f"| {ratio} | {r['padded']:,.0f} | {ev} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="measured optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (compilation)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--micro", type=int, default=8)
    parser.add_argument("--global", dest="global_batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of a 1-process variant (2 ranks: 1 each)")
    parser.add_argument("--eval", action="store_true", help="also time one evaluation in the trainer variants")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cpt-bench-cpu"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per variant run")
    parser.add_argument("--json", help="also write every repetition's results here")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args)
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    if BASELINE not in variants:
        variants.insert(0, BASELINE)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    build_inputs(work)
    reps: list[dict[str, dict]] = []
    for rep in range(args.repeats):
        reps.append({})
        for v in variants:
            reps[-1][v] = result = launch(v, args, work)
            what = result.get("error") or f"{result['tokens_per_second']:,.0f} tokens/s"
            print(f"# rep {rep + 1} {v}: {what} (load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reps, indent=1))
    rows = summarise(reps, variants)
    print_table(rows, args)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
