"""A tiny Llama, its corpora and a trainer config on local disk, for tests outside tests/trainer
that run the real trainer as a pod's container would (`cpt-trainer launch`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from launching import free_port, launch_env

from cpt_trainer.shipped_text import general_documents, legal_documents
from cpt_trainer.tinymodel import build_tiny_llama, train_tokenizer
from cpt_trainer.train.shards import write_corpus


def build_inputs(root: Path) -> dict[str, Path]:
    """`model` (tokenizer beside the weights), `legal` (domain) and `general` (replay) corpora."""
    from transformers import AutoTokenizer

    texts = {"general": general_documents()[:200], "legal": legal_documents(limit=200)}
    model = root / "model"
    train_tokenizer(texts["general"] + texts["legal"], model, vocab_size=512)
    tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=True)
    build_tiny_llama(len(tokenizer), model, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                     max_position_embeddings=256)  # fmt: skip
    out = {"model": model}
    for name, docs in texts.items():
        ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
        cut = len(ids) // 10
        out[name] = write_corpus(root / name, {"train": ids[cut:], "eval": ids[:cut]}, len(tokenizer),
                                 tokenizer.eos_token_id, shard_tokens=20_000)  # fmt: skip
    return out


def write_config(path: Path, inputs: dict[str, Path], checkpoints: Path, total_steps: int, interval: int) -> Path:
    cfg: dict[str, Any] = {
        "identity": {"namespace": "tenant-a", "name": "run-1"},
        "model": {"uri": str(inputs["model"])},
        "data": {
            "corpora": [
                {"name": "legal", "role": "domain", "weight": 1.0, "uri": str(inputs["legal"])},
                {"name": "general", "role": "replay", "weight": 1.0, "uri": str(inputs["general"])},
            ],
            "alpha": 0.7,
            "sequence_length": 64,
            "seed": 7,
        },
        "optim": {"learning_rate": 3e-3, "min_learning_rate": 3e-4, "warmup_fraction": 0.1},
        "batch": {"micro_batch_size": 2, "global_batch_size": 8, "total_steps": total_steps},
        "engine": {"kind": "torch", "device": "cpu", "compile": False, "precision": "fp32"},
        "eval": {"interval": 1000, "max_batches": 1},
        "checkpoint": {"interval": interval, "uri": str(checkpoints)},
        "metrics": {"port": 0},
    }
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def start_container(command: list[str], config: Path, cache: Path, log: Path) -> subprocess.Popen:
    """Run a trainer pod's container command (`cpt-trainer launch ... -- train --config F`) here,
    with its config file replaced by `config`. The PET_* variables the training operator sets
    (one node, one process) point the launcher at a loopback port."""
    cmd = list(command)
    if cmd[0] != "cpt-trainer" or "--config" not in cmd:
        raise AssertionError(f"not the trainer's container command: {command}")
    cmd[0] = str(Path(sys.executable).with_name("cpt-trainer"))
    cmd[cmd.index("--config") + 1] = str(config)
    env = launch_env(cache)
    env.update(PET_NNODES="1", PET_NPROC_PER_NODE="1", PET_NODE_RANK="0", PET_MASTER_ADDR="127.0.0.1",
               PET_MASTER_PORT=str(free_port()))  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
