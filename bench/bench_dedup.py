"""Benchmark: the signature + LSH stage of our curation pipeline against the straightforward
datasketch loop (and datatrove's MinHash dedup, when a Python with datatrove is given).

    .venv/bin/python bench/bench_dedup.py --docs 100000 [--datatrove-python /tmp/dtvenv/bin/python]

Corpus: fixed (seeded) random-word documents of 50-250 words, 20 % of them near-duplicates
(0-6 word substitutions) of an earlier document. Both our stage and the loop use the same
shingles (word 5-grams), num_perm 128, seed 1, threshold 0.8 with the same LSH bands/rows,
and verify band candidates by the signatures' Jaccard estimate; the script checks that they
remove exactly the same documents. datatrove differs in text normalisation, hashing and
clustering (union-find, no verification), so for it the agreement with ours is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context

import numpy as np

from cpt_trainer.curate.minhash import MinHashSigner, lsh_params, near_duplicates, shingles

NUM_PERM, NGRAM, SEED, THRESHOLD = 128, 5, 1, 0.8
BATCH = 1024


def make_corpus(n_docs: int, seed: int = 2024) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 10))) for _ in range(30000)]
    docs: list[list[str]] = []
    for _ in range(n_docs):
        if docs and rng.random() < 0.2:
            src = list(rng.choice(docs))
            for _ in range(rng.randint(0, 6)):
                src[rng.randrange(len(src))] = rng.choice(vocab)
            docs.append(src)
        else:
            docs.append([rng.choice(vocab) for _ in range(rng.randint(50, 250))])
    return [" ".join(d) for d in docs]


def ours(texts: list[str], bands: int, rows: int) -> tuple[set[int], float]:
    t0 = time.perf_counter()
    signer = MinHashSigner(NUM_PERM, NGRAM, SEED)
    sigs, signed = [], []
    for lo in range(0, len(texts), BATCH):
        s, ok = signer.sign(texts[lo : lo + BATCH])
        sigs.append(s)
        signed.append(ok)
    sig = np.concatenate(sigs)
    dups = near_duplicates(sig, np.flatnonzero(np.concatenate(signed)), bands, rows, THRESHOLD)
    return set(dups.tolist()), time.perf_counter() - t0


def _sign_range(args):
    texts = args
    return MinHashSigner(NUM_PERM, NGRAM, SEED).sign(texts)


def ours_two_workers(texts: list[str], bands: int, rows: int) -> tuple[set[int], float]:
    """Two processes sign alternate batches (as two slices would), then one LSH pass."""
    t0 = time.perf_counter()
    batches = [texts[lo : lo + BATCH] for lo in range(0, len(texts), BATCH)]
    with get_context("fork").Pool(2) as pool:
        results = pool.map(_sign_range, batches, chunksize=4)
    sig = np.concatenate([r[0] for r in results])
    signed = np.concatenate([r[1] for r in results])
    dups = near_duplicates(sig, np.flatnonzero(signed), bands, rows, THRESHOLD)
    return set(dups.tolist()), time.perf_counter() - t0


def straightforward(texts: list[str], bands: int, rows: int) -> tuple[set[int], float]:
    """One datasketch.MinHash per document, update per shingle, query then insert one at a time."""
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM, params=(bands, rows))
    kept: dict[int, MinHash] = {}
    dups = set()
    for i, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM, seed=SEED)
        for sh in shingles(text, NGRAM):
            m.update(sh)
        if any(m.jaccard(kept[c]) >= THRESHOLD for c in lsh.query(m)):
            dups.add(i)
        else:
            lsh.insert(i, m)
            kept[i] = m
    return dups, time.perf_counter() - t0


DATATROVE_SCRIPT = r"""
import json, sys, time, os
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupSignature, MinhashDedupBuckets,
    MinhashDedupCluster, MinhashDedupFilter)
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig
src, work, bands, rows, tasks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
cfg = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, seed=1, hash_config=HashConfig(precision=32))
t0 = time.perf_counter()
def run(pipeline, tasks, name):
    LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=tasks, logging_dir=f"{work}/logs/{name}").run()
run([JsonlReader(src), MinhashDedupSignature(output_folder=f"{work}/sigs", config=cfg)], tasks, "sig")
run([MinhashDedupBuckets(input_folder=f"{work}/sigs", output_folder=f"{work}/buckets", config=cfg)], bands, "buckets")
run([MinhashDedupCluster(input_folder=f"{work}/buckets", output_folder=f"{work}/remove_ids", config=cfg)], 1, "cluster")
run([JsonlReader(src), MinhashDedupFilter(input_folder=f"{work}/remove_ids",
     exclusion_writer=JsonlWriter(f"{work}/removed", compression=None)), JsonlWriter(f"{work}/kept", compression=None)], tasks, "filter")
elapsed = time.perf_counter() - t0
removed = []
for root, _, files in os.walk(f"{work}/removed"):
    for f in files:
        for line in open(os.path.join(root, f)):
            removed.append(json.loads(line)["id"])
print(json.dumps({"elapsed": elapsed, "removed": removed}))
"""


def datatrove(python: str, texts: list[str], bands: int, rows: int, tasks: int) -> tuple[set[int], float] | None:
    with tempfile.TemporaryDirectory(prefix="bench-dt-") as tmp:
        src = os.path.join(tmp, "input")
        os.makedirs(src)
        per = -(-len(texts) // tasks)
        for t in range(tasks):
            with open(os.path.join(src, f"part-{t}.jsonl"), "w") as fh:
                for i in range(t * per, min(len(texts), (t + 1) * per)):
                    fh.write(json.dumps({"id": str(i), "text": texts[i]}) + "\n")
        script = os.path.join(tmp, "dt.py")
        with open(script, "w") as fh:
            fh.write(DATATROVE_SCRIPT)
        proc = subprocess.run([python, script, src, os.path.join(tmp, "work"), str(bands), str(rows), str(tasks)],
                              capture_output=True, text=True)  # fmt: skip
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return None
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        return {int(i) for i in out["removed"]}, out["elapsed"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--datatrove-python", default=None, help="a Python interpreter with datatrove installed")
    ap.add_argument("--skip-two-workers", action="store_true")
    args = ap.parse_args()

    texts = make_corpus(args.docs)
    n_shingles = sum(len(shingles(t, NGRAM)) for t in texts)
    bands, rows = lsh_params(THRESHOLD, NUM_PERM, 0.1, 0.9)
    print(f"corpus: {len(texts)} documents, {n_shingles} shingles; LSH {bands} bands x {rows} rows; cores: {os.cpu_count()}")

    # The machine is shared: ours runs before and after the (long) loop, both are reported.
    rows_out = []
    first_dups, first_t = ours(texts, bands, rows)
    base_dups, base_t = straightforward(texts, bands, rows)
    rows_out.append(("straightforward datasketch loop (1 process)", base_t, len(base_dups), "reference"))
    our_dups, our_t = ours(texts, bands, rows)
    for label, d, t in (("before", first_dups, first_t), ("after", our_dups, our_t)):
        rows_out.append((f"ours: batched signatures + banded LSH (1 process, run {label} the loop)", t, len(d),
                         "identical" if d == base_dups else f"DIFFERENT ({len(d ^ base_dups)} docs)"))  # fmt: skip
    our_dups = our_dups if our_dups == first_dups else set()
    if not args.skip_two_workers:
        two_dups, two_t = ours_two_workers(texts, bands, rows)
        rows_out.append(("ours: 2 signing processes + banded LSH", two_t, len(two_dups),
                         "identical" if two_dups == base_dups else f"DIFFERENT ({len(two_dups ^ base_dups)} docs)"))  # fmt: skip
    if args.datatrove_python:
        res = datatrove(args.datatrove_python, texts, bands, rows, tasks=2)
        if res is not None:
            dt_dups, dt_t = res
            agree = len(dt_dups & base_dups) / max(1, len(dt_dups | base_dups))
            rows_out.append(("datatrove MinHash dedup (4 stages, 2 tasks)", dt_t, len(dt_dups),
                             f"overlap with reference {agree:.3f} (own normalisation/clustering)"))  # fmt: skip

    print()
    print("| method | seconds | documents/s | speed-up | removed | result vs reference |")
    print("|---|---:|---:|---:|---:|---|")
    for name, t, n_removed, check in rows_out:
        print(f"| {name} | {t:.1f} | {len(texts) / t:,.0f} | {base_t / t:.1f}x | {n_removed} | {check} |")
    return 0 if our_dups == base_dups else 1


if __name__ == "__main__":
    sys.exit(main())
