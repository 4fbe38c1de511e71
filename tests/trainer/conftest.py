"""Fixtures for the trainer tests: a locally trained tokenizer, a tiny Llama, token corpora
written in the curation shard format, a config factory and a moto S3 server."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from cpt_trainer.shipped_text import general_documents, legal_documents
from cpt_trainer.tinymodel import build_tiny_llama, train_tokenizer
from cpt_trainer.train.shards import write_corpus

VOCAB = 512


@pytest.fixture(scope="session", autouse=True)
def _small_threads():
    import torch

    torch.set_num_threads(1)  # the machine is shared: tests stay on one core each


@pytest.fixture(scope="session")
def texts() -> dict[str, list[str]]:
    return {"general": general_documents()[:300], "legal": legal_documents(limit=300)}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, texts) -> Path:
    """A tiny Llama (untied embeddings) with its tokenizer saved next to it."""
    out = tmp_path_factory.mktemp("tiny-model")
    tokenizer = train_tokenizer(texts["general"] + texts["legal"], out, vocab_size=VOCAB)
    build_tiny_llama(len(tokenizer), out, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                     max_position_embeddings=256)
    return out


@pytest.fixture(scope="session")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def encode_documents(tokenizer, docs: list[str]) -> list[list[int]]:
    return tokenizer(docs, add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="session")
def corpora(tmp_path_factory, tokenizer, texts) -> dict[str, Path]:
    """`legal` (domain) and `general` (replay) corpus folders: ~10 % of documents held out for eval."""
    root = tmp_path_factory.mktemp("corpora")
    out = {}
    for name in ("legal", "general"):
        docs = encode_documents(tokenizer, texts[name])
        cut = len(docs) // 10
        out[name] = write_corpus(root / name, {"train": docs[cut:], "eval": docs[:cut]}, len(tokenizer),
                                 tokenizer.eos_token_id, shard_tokens=20_000)
    return out


@pytest.fixture
def make_config(tmp_path, model_dir, corpora):
    """Write a small TrainerConfig JSON; keyword overrides are merged into the named sections."""

    def make(name: str = "config.json", **sections) -> Path:
        cfg = {
            "identity": {"namespace": "tenant-a", "name": "run-1"},
            "model": {"uri": str(model_dir)},
            "data": {
                "corpora": [
                    {"name": "legal", "role": "domain", "weight": 1.0, "uri": str(corpora["legal"])},
                    {"name": "general", "role": "replay", "weight": 1.0, "uri": str(corpora["general"])},
                ],
                "alpha": 0.7,
                "sequence_length": 64,
                "seed": 7,
            },
            "optim": {"learning_rate": 3e-3, "min_learning_rate": 3e-4, "warmup_fraction": 0.1},
            "batch": {"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 6},
            "engine": {"kind": "torch", "device": "cpu", "compile": False, "precision": "fp32"},
            "eval": {"interval": 3, "max_batches": 2},
            "checkpoint": {"interval": 3, "uri": str(tmp_path / "checkpoints")},
            "metrics": {"port": 0},
        }
        for section, values in sections.items():
            if isinstance(values, dict) and isinstance(cfg.get(section), dict):
                cfg[section] = {**cfg[section], **values}
            else:
                cfg[section] = values
        path = tmp_path / name
        path.write_text(json.dumps(cfg), encoding="utf-8")
        return path

    return make


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CPT_CACHE_DIR", str(tmp_path / "cache"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto S3 server in this process on 127.0.0.1 (server mode: real HTTP through boto3)."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="session")
def general_base_model(tmp_path_factory, model_dir, corpora) -> Path:
    """The tiny Llama after a short pretraining on the general corpus's train split: a base model
    that knows general text (the random one scores chance on any benchmark)."""
    import shutil

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from cpt_trainer.train.shards import TokenStream, read_manifest

    out = tmp_path_factory.mktemp("general-base")
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    stream = TokenStream(read_manifest(corpora["general"]), "train")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    length, batch = 64, 16
    for _ in range(300):
        starts = rng.integers(0, len(stream) - length, size=batch)
        ids = torch.from_numpy(np.stack([stream.read(int(s), length) for s in starts]).astype(np.int64))
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out), safe_serialization=True)
    return out


@pytest.fixture(scope="session")
def cloze_task(tmp_path_factory, texts) -> Path:
    """A multiple-choice cloze task file from general passages the models never trained on."""
    from cpt_trainer.cloze_task import cloze_items, write_task_file
    from cpt_trainer.shipped_text import general_documents

    items = cloze_items(general_documents()[300:420], texts["legal"], count=80)
    assert len(items) >= 60
    return write_task_file(items, tmp_path_factory.mktemp("cloze") / "cloze.jsonl")


@pytest.fixture
def bucket(moto_endpoint, request):
    """(client, name): the test module's `BUCKET` on the moto server, emptied and removed after."""
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = request.module.BUCKET
    client.create_bucket(Bucket=name)
    yield client, name
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=name).get("Contents", [])]
    if keys:
        client.delete_objects(Bucket=name, Delete={"Objects": [{"Key": k} for k in keys]})
    client.delete_bucket(Bucket=name)
