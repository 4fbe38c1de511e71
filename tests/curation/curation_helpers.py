"""Helpers of the curation tests: configs, running the CLI, reading the output back, and the
generated corpus with planted near-duplicates of known Jaccard similarity."""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECORD_BITS = 40


def key(file_index: int, record: int) -> int:
    return (file_index << RECORD_BITS) | record


def config(sources: list[str], output: str, tokenizer: str, tmp: Path, **over) -> dict:
    cfg = {
        "identity": {"namespace": "tenant-a", "name": "corpus-test"},
        "sources": [{"uri": s} for s in sources],
        "format": "jsonl",
        "tokenizer_uri": tokenizer,
        "output_uri": output,
        "shard_tokens": 200_000,
        "eval_fraction": 0.02,
        "termination_message_path": str(tmp / "termination-log"),
    }
    for k, v in over.items():
        if k == "stages":
            cfg["stages"] = v
        else:
            cfg[k] = v
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg), encoding="utf-8")
    return path


def run_cli(cfg: dict, path: Path) -> int:
    from cpt_trainer.cli import main

    write_config(path, cfg)
    return main(["curate", "--config", str(path)])


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_documents(out: Path) -> tuple[dict, dict[str, dict[int, np.ndarray]]]:
    """(manifest, {split: {document key: token ids without the trailing EOS}}), checking the
    shard layout on the way: sizes, checksums, offsets and the EOS after every document."""
    manifest = json.loads((out / "manifest.json").read_text())
    dtype = np.dtype("<u2") if manifest["dtype"] == "uint16" else np.dtype("<u4")
    docs: dict[str, dict[int, np.ndarray]] = {}
    for split, entries in manifest["splits"].items():
        docs[split] = {}
        for e in entries:
            path = out / e["file"]
            assert path.stat().st_size == e["tokens"] * dtype.itemsize, e["file"]
            assert sha256_file(path) == e["sha256"], e["file"]
            data = np.memmap(path, dtype=dtype, mode="r")
            offsets = np.load(out / e["index"])
            ids = np.load(out / e["ids"])
            assert len(offsets) == e["documents"] + 1 and len(ids) == e["documents"]
            assert offsets[0] == 0 and offsets[-1] == e["tokens"]
            for i, k in enumerate(ids.tolist()):
                doc = np.asarray(data[offsets[i] : offsets[i + 1]])
                assert doc[-1] == manifest["eos_id"], f"document {i} of {e['file']} does not end with EOS"
                assert k not in docs[split]
                docs[split][k] = doc[:-1].astype(np.int64)
    return manifest, docs


def kept_keys(out: Path) -> set[int]:
    manifest = json.loads((out / "manifest.json").read_text())
    keys: set[int] = set()
    for entries in manifest["splits"].values():
        for e in entries:
            keys.update(np.load(out / e["ids"]).tolist())
    return keys


def shingle_set(text: str, n: int = 5) -> set[str]:
    w = text.lower().split()
    return {" ".join(w[i : i + n]) for i in range(len(w) - n + 1)}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / len(sa | sb)


@dataclass
class PlantedCorpus:
    files: list[list[str]]  # texts per file, in order
    order: list[tuple[int, int]]  # (file, record) of each document in corpus order
    dup_pairs: list[tuple[int, int, float]]  # (key of first, key of later, true jaccard), jaccard >= 0.85
    low_pairs: list[tuple[int, int, float]]  # unrelated-looking relatives, jaccard < 0.5


def planted_corpus(vocab: list[str], n_base: int = 8500, n_dup: int = 1000, n_low: int = 500,
                   words: int = 200, n_files: int = 8, seed: int = 1234) -> PlantedCorpus:  # fmt: skip
    """Random-word documents; `n_dup` of them get a copy with 0-3 isolated word substitutions
    (Jaccard 1.0 / ~0.95 / ~0.90 / ~0.86) and `n_low` a relative with 14-30 substitutions
    (Jaccard < 0.5), each placed at a random position of the corpus."""
    rng = random.Random(seed)
    base = [[rng.choice(vocab) for _ in range(words)] for _ in range(n_base)]
    sources = rng.sample(range(n_base), n_dup + n_low)

    def mutate(doc: list[str], k: int) -> list[str]:
        out = list(doc)
        slots = list(range(5, words - 5, 6))  # 6 apart: every substitution kills 5 distinct shingles
        for pos in rng.sample(slots, k):
            out[pos] = rng.choice(vocab) + "x"  # a word no base document has
        return out

    texts = [" ".join(d) for d in base]
    relations: list[tuple[int, int, str]] = []
    for i, src in enumerate(sources):
        if i < n_dup:
            texts.append(" ".join(mutate(base[src], i % 4)))
            relations.append((src, len(texts) - 1, "dup"))
        else:
            texts.append(" ".join(mutate(base[src], rng.randint(14, 30))))
            relations.append((src, len(texts) - 1, "low"))
    perm = list(range(len(texts)))
    rng.shuffle(perm)  # perm[position] = text id
    per_file = -(-len(texts) // n_files)
    files: list[list[str]] = [[] for _ in range(n_files)]
    where: dict[int, tuple[int, int]] = {}
    order = []
    for pos, tid in enumerate(perm):
        f = pos // per_file
        where[tid] = (f, len(files[f]))
        order.append(where[tid])
        files[f].append(texts[tid])
    dup_pairs, low_pairs = [], []
    for a, b, kind in relations:
        (fa, ra), (fb, rb) = where[a], where[b]
        ka, kb = key(fa, ra), key(fb, rb)
        first, later = (ka, kb) if (fa, ra) < (fb, rb) else (kb, ka)
        j = jaccard(texts[a], texts[b])
        if kind == "dup":
            assert j >= 0.85, j
            dup_pairs.append((first, later, j))
        else:
            assert j < 0.5, j
            low_pairs.append((first, later, j))
    return PlantedCorpus(files, order, dup_pairs, low_pairs)


def corpus_vocabulary() -> list[str]:
    from cpt_trainer.shipped_text import general_documents

    words = sorted({w for d in general_documents() for w in re.findall(r"[a-z]{3,12}", d.lower())})
    return words


def write_jsonl_files(folder: Path, files: list[list[str]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, texts in enumerate(files):
        p = folder / f"part-{i:02d}.jsonl"
        with p.open("w", encoding="utf-8") as fh:
            for t in texts:
                fh.write(json.dumps({"id": len(paths), "text": t}) + "\n")
        paths.append(p)
    return paths
