"""Fixtures of the curation tests: a tokenizer and a tiny reference LM trained here on the
text shipped with the machine, the planted-duplicates corpus, and a local S3 server."""

from __future__ import annotations

import os
import socket

import pytest

from curation_helpers import corpus_vocabulary, planted_corpus, write_jsonl_files


@pytest.fixture(scope="session")
def shipped_split():
    """Shipped text split in two: the reference model trains on one half, tests use the other."""
    from cpt_trainer.shipped_text import general_documents, legal_documents

    general, legal = general_documents(), legal_documents(limit=300)
    return {"train": general[0::2] + legal[0::2], "held_out": general[1::2] + legal[1::2]}


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, shipped_split):
    from cpt_trainer.tinymodel import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(shipped_split["train"], out, vocab_size=2048)
    return out


@pytest.fixture(scope="session")
def reference_model_dir(tmp_path_factory, tokenizer_dir, shipped_split):
    """A tiny Llama (hidden 64, 2 layers) trained 200 steps on half the shipped text, saved
    with its tokenizer: the quality filter's reference model."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from cpt_trainer.tinymodel import build_tiny_llama

    out = tmp_path_factory.mktemp("reference-model")
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = build_tiny_llama(len(tok), hidden_size=64, num_layers=2, num_heads=4, intermediate_size=176)
    ids = np.concatenate(
        [tok(d, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for d in shipped_split["train"]]
    ).astype(np.int64)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-3)
    gen = torch.Generator().manual_seed(0)
    seq, batch = 64, 16
    model.train()
    for _ in range(200):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen).tolist()
        x = torch.stack([torch.from_numpy(ids[s : s + seq]) for s in starts])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """10,000 documents in 8 jsonl files with 1,000 planted near-duplicates (J >= 0.85) and
    500 planted low-similarity relatives (J < 0.5)."""
    corpus = planted_corpus(corpus_vocabulary())
    folder = tmp_path_factory.mktemp("planted") / "input"
    write_jsonl_files(folder, corpus.files)
    return corpus, folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 in server mode on 127.0.0.1; credentials through the environment, as in a pod."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
