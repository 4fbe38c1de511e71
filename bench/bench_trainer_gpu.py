#!/usr/bin/env python
"""GPU benchmark of the trainer (not a test): tokens/s and MFU on the 1.1B Llama shape, seq 2048, bf16.

Variants, each in its own process (fresh GPU memory, its own torchrun-style environment):
  default  the trainer's default GPU path (engine.kind auto -> plain PyTorch: fp32 master
           weights, bf16 autocast, SDPA, torch.compile, fused AdamW, no gradient checkpointing)
  zero2    the trainer with engine.kind deepspeed, ZeRO-2
  zero3    the trainer with engine.kind deepspeed, ZeRO-3
  hf       HF Trainer baseline: bf16, no gradient checkpointing, micro-batch 4, fused AdamW
The trainer variants go through `cpt_trainer.train.main.prepare` (the same code `cpt-trainer
train` runs) on random-token shards and time `Trainer.train_step`. MFU counts 6N + 12 L H S
FLOPs per token against the device's dense bf16 peak (989.5 TFLOP/s on H100/H200).

    python bench/bench_trainer_gpu.py                  # all four, prints a markdown table
    python bench/bench_trainer_gpu.py --variants default,hf --steps 10
    python bench/bench_trainer_gpu.py --tiny --device cpu --variants default,hf   # smoke run on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)
TINY = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=512, max_position_embeddings=256)
MICRO = {"default": 16, "zero2": 8, "zero3": 8, "hf": 4}
REFERENCE = [  # DESIGN.md section 7, one H100 80GB
    ("HF Trainer + ZeRO-3 + grad ckpt, mb 2 (reference)", 6012, 0.047),
    ("HF Trainer, no ckpt, mb 4, fused AdamW (reference)", 44956, 0.350),
    ("plain PyTorch + compile, mb 16 (reference)", 60396, 0.470),
]


def build_inputs(work: Path, shape: dict, seq: int, tokens: int) -> dict:
    """A random-init Llama folder, a tokenizer of the same vocabulary, and random-token shards."""
    import numpy as np
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from cpt_trainer.train.shards import write_corpus

    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        torch.manual_seed(0)
        config = LlamaConfig(**shape, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=3)
        LlamaForCausalLM(config).save_pretrained(model_dir)
        vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
        vocab.update({f"t{i}": i for i in range(4, shape["vocab_size"])})
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                pad_token="<pad>").save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    corpora = {}
    for name in ("domain", "replay"):
        folder = work / name
        if not (folder / "manifest.json").exists():
            docs = [rng.integers(4, shape["vocab_size"], size=4096).tolist() for _ in range(max(2, tokens // 4096))]
            write_corpus(folder, {"train": docs, "eval": docs[:2]}, shape["vocab_size"], 2)
        corpora[name] = str(folder)
    return {"model": str(model_dir), **corpora}


def trainer_config(inputs: dict, variant: str, seq: int, micro: int, device: str, steps: int) -> dict:
    engine = {"kind": "auto", "device": device, "compile": True, "precision": "bf16", "gradient_checkpointing": False}
    if variant == "zero2":
        engine.update(kind="deepspeed", zero_stage=2)
    elif variant == "zero3":
        engine.update(kind="deepspeed", zero_stage=3)
    if device == "cpu":
        engine.update(precision="fp32")
    return {
        "identity": {"namespace": "bench", "name": variant},
        "model": {"uri": inputs["model"]},
        "data": {"corpora": [{"name": "domain", "role": "domain", "weight": 1.0, "uri": inputs["domain"]},
                             {"name": "replay", "role": "replay", "weight": 1.0, "uri": inputs["replay"]}],
                 "alpha": 0.7, "sequence_length": seq},
        "optim": {"learning_rate": 3e-5, "min_learning_rate": 3e-6, "warmup_fraction": 0.01},
        "batch": {"micro_batch_size": micro, "global_batch_size": micro * 2, "total_steps": 1000},
        "engine": engine,
        "eval": {"interval": 1000, "max_batches": 1},
        "checkpoint": {"interval": 1000, "uri": str(Path(inputs["model"]).parent / f"ck-{variant}")},
        "metrics": {"port": 0},
    }


def run_trainer_variant(args, inputs: dict) -> dict:
    import torch

    from cpt_trainer.contract.config import TrainerConfig
    from cpt_trainer.train.main import prepare

    micro = args.micro or MICRO[args.one]
    cfg = TrainerConfig.model_validate(trainer_config(inputs, args.one, args.seq, micro, args.device, args.steps))
    run = prepare(cfg)
    trainer = run.trainer
    sync = torch.cuda.synchronize if args.device != "cpu" else (lambda: None)
    try:
        for _ in range(args.warmup):  # compile and allocator warm-up
            trainer.train_step()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            stats = trainer.train_step()
        sync()
        seconds = time.perf_counter() - start
    finally:
        run.close()
    tokens = args.steps * trainer.tokens_per_step
    return {"variant": args.one, "engine": trainer.engine.kind, "micro_batch": micro, "tokens_per_second": tokens / seconds,
            "flops_per_token": trainer.flops_per_token, "peak": trainer.peak_flops, "loss": stats.loss,
            "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device != "cpu" else 0.0}


def run_hf_variant(args, inputs: dict) -> dict:
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    if importlib.util.find_spec("accelerate") is None:
        raise SystemExit("the HF Trainer baseline needs the `accelerate` package, which is not installed")

    from cpt_trainer.train.flops import device_peak_flops, flops_per_token

    micro = args.micro or MICRO["hf"]
    on_gpu = args.device != "cpu"
    model = AutoModelForCausalLM.from_pretrained(inputs["model"], dtype=torch.float32, attn_implementation="sdpa")
    g = torch.Generator().manual_seed(0)
    total = (args.warmup + args.steps) * micro
    data = torch.randint(4, model.config.vocab_size, (total, args.seq), generator=g)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return total

        def __getitem__(self, i):
            return {"input_ids": data[i], "labels": data[i]}

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, control, **kw):
            if on_gpu:
                torch.cuda.synchronize()
            marks.append(time.perf_counter())

    targs = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=micro, max_steps=args.warmup + args.steps,
        bf16=on_gpu, optim="adamw_torch_fused" if on_gpu else "adamw_torch", gradient_checkpointing=False,
        learning_rate=3e-5, logging_steps=10_000, save_strategy="no", report_to="none", dataloader_num_workers=2,
        use_cpu=not on_gpu,
    )
    Trainer(model=model, args=targs, train_dataset=Rows(), callbacks=[Clock()]).train()
    seconds = marks[-1] - marks[args.warmup - 1]
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    peak = device_peak_flops(torch.cuda.get_device_name()) if on_gpu else 0.0
    return {"variant": "hf", "engine": "hf-trainer", "micro_batch": micro,
            "tokens_per_second": args.steps * micro * args.seq / seconds,
            "flops_per_token": flops_per_token(n, cfg.num_hidden_layers, cfg.hidden_size, args.seq), "peak": peak,
            "loss": float("nan"), "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else 0.0}


def child(args) -> None:
    inputs = json.loads(Path(args.inputs).read_text())
    result = run_hf_variant(args, inputs) if args.one == "hf" else run_trainer_variant(args, inputs)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="default,zero2,zero3,hf")
    parser.add_argument("--steps", type=int, default=15, help="measured optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="unmeasured steps first (compilation)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--micro", type=int, default=0, help="micro-batch for every variant (0: per-variant default)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of the 1.1B shape (smoke run)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "cpt-bench"))
    parser.add_argument("--timeout", type=int, default=600, help="seconds per variant")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        child(args)
        return 0
    work = Path(args.work) / ("tiny" if args.tiny else "llama-1.1b")
    work.mkdir(parents=True, exist_ok=True)
    seq = min(args.seq, 128) if args.tiny else args.seq
    inputs = build_inputs(work, TINY if args.tiny else LLAMA_1B, seq, tokens=64 * seq * 40)
    (work / "inputs.json").write_text(json.dumps(inputs))
    results = []
    for i, variant in enumerate(v.strip() for v in args.variants.split(",") if v.strip()):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + i), RANK="0", WORLD_SIZE="1",
                   LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", CPT_CACHE_DIR=str(work / "cache"))
        cmd = [sys.executable, __file__, "--one", variant, "--inputs", str(work / "inputs.json"), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--seq", str(seq), "--micro", str(args.micro), "--device", args.device]
        started = time.time()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("BENCH_RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
                results.append({"variant": variant, "error": f"exit {proc.returncode}: " + " | ".join(tail)})
            else:
                results.append(json.loads(lines[-1][len("BENCH_RESULT "):]))
        except subprocess.TimeoutExpired:
            results.append({"variant": variant, "error": f"timed out after {args.timeout} s"})
        print(f"# {variant}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    print_table(results, args, seq)
    return 0 if all("error" not in r for r in results) else 1


def print_table(results: list[dict], args, seq: int) -> None:
    try:
        import torch

        card = torch.cuda.get_device_name() if args.device == "cuda" and torch.cuda.is_available() else args.device
    except Exception:  # noqa: BLE001
        card = args.device
    print(f"\ncard: {card}; shape: {'tiny' if args.tiny else 'Llama 1.1B'}, seq {seq}, {args.steps} measured steps after {args.warmup}\n")
    print("| variant | engine | micro-batch | tokens/s | MFU | peak mem GiB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['variant']} | error | | | | {r['error'][:300]} |")
            continue
        mfu = r["tokens_per_second"] * r["flops_per_token"] / r["peak"] if r["peak"] else 0.0
        print(f"| {r['variant']} | {r['engine']} | {r['micro_batch']} | {r['tokens_per_second']:,.0f} | {mfu:.1%} | {r['max_memory_gib']:.1f} |")
    if not args.tiny:
        for name, tps, ref_mfu in REFERENCE:
            print(f"| {name} | | | {tps:,} | {ref_mfu:.1%} | |")


if __name__ == "__main__":
    sys.exit(main())
