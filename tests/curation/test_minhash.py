"""Our bulk MinHash equals datasketch's, and the LSH decision equals the straightforward loop."""

from __future__ import annotations

import random

import numpy as np


def _corpus(n: int = 600) -> list[str]:
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(3000)]
    docs: list[list[str]] = []
    for _ in range(n):
        if docs and rng.random() < 0.3:
            d = list(rng.choice(docs))
            for _ in range(rng.randint(0, 8)):
                d[rng.randrange(len(d))] = rng.choice(vocab)
            docs.append(d)
        else:
            docs.append([rng.choice(vocab) for _ in range(rng.randint(1, 150))])
    return [" ".join(d) for d in docs] + ["", "Ünïcode\u00a0text\u2003with  odd spaces, and CASE"]


def test_signatures_are_bit_identical_to_datasketch_and_decisions_to_the_plain_loop():
    from datasketch import MinHash, MinHashLSH

    from cpt_trainer.curate.minhash import MinHashSigner, lsh_params, near_duplicates, shingles

    texts = _corpus()
    sig, signed = MinHashSigner(128, 5, seed=1, block_shingles=300).sign(texts)
    assert not signed[-2] and signed[-1]
    bands, rows = lsh_params(0.8, 128, 0.1, 0.9)
    lsh = MinHashLSH(threshold=0.8, num_perm=128, params=(bands, rows))
    kept: dict[int, MinHash] = {}
    expected = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=128, seed=1)
        for sh in shingles(text, 5):
            m.update(sh)
        assert np.array_equal(m.hashvalues, sig[i]), i
        if not signed[i]:
            continue
        if any(m.jaccard(kept[c]) >= 0.8 for c in lsh.query(m)):
            expected.append(i)
        else:
            lsh.insert(i, m)
            kept[i] = m
    got = near_duplicates(sig, np.flatnonzero(signed), bands, rows, 0.8)
    assert len(expected) > 20
    assert got.tolist() == expected
