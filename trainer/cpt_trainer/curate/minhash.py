"""MinHash signatures and the LSH near-duplicate decision, vectorised over many documents.

Signatures are bit-for-bit those of `datasketch.MinHash` (scheme "affine32", default SHA-1
32-bit shingle hash, the same seed and permutations): `sign` hashes every shingle of a
batch of documents once, then applies all permutations to all shingles of the batch in one
numpy expression and takes the per-document minimum with `np.minimum.reduceat`, instead of
one small numpy call per shingle (or per document).

The decision (`near_duplicates`) is the one of the straightforward datasketch loop
    for doc in order: cands = lsh.query(m); dup = any(m.jaccard(c) >= t for c in cands)
                      if not dup: lsh.insert(doc, m)
i.e. a document is a near-duplicate when it shares a band with an earlier *kept* document
whose signature agrees on >= threshold of the permutations. It is computed band by band:
`np.unique` finds, per band, the buckets with more than one member; only documents in such
buckets enter the (sequential, dict-based) greedy pass, every other document is kept
without any per-document Python work. Memory: the signatures (which may be a memory map)
and one uint64 key per document and band.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from operator import methodcaller

import numpy as np

# MurmurHash3's 32-bit finalizer, as datasketch applies it before the affine permutations.
_M1 = np.uint32(0x85EBCA6B)
_M2 = np.uint32(0xC2B2AE35)
_EMPTY = np.uint32(0xFFFFFFFF)
_K1 = np.uint64(0x9E3779B97F4A7C15)
_K2 = np.uint64(0xBF58476D1CE4E5B9)
_K3 = np.uint64(0x94D049BB133111EB)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(13))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def shingles(text: str, ngram: int) -> list[bytes]:
    """Word n-gram shingles of the lower-cased, whitespace-split text, UTF-8 encoded.
    A document shorter than `ngram` words is one shingle; an empty one has none."""
    words = text.lower().split()
    if len(words) <= ngram:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i : i + ngram]).encode() for i in range(len(words) - ngram + 1)]


@lru_cache(maxsize=16)
def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters (a odd, b) for `num_perm` and `seed`."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
    return np.ascontiguousarray(a, dtype=np.uint32), np.ascontiguousarray(b, dtype=np.uint32)


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    """(bands, rows) as `datasketch.MinHashLSH` chooses them for these weights."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(fp_weight, fn_weight))
    return lsh.b, lsh.r


class MinHashSigner:
    """Signs batches of documents; `sign(texts)` -> (uint32 [n, num_perm], has_shingles [n])."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1, block_shingles: int = 1 << 10):
        self.num_perm = num_perm
        self.ngram = ngram
        self.a, self.b = permutations(num_perm, seed)
        self.block_shingles = block_shingles  # bounds the [shingles, num_perm] buffer (512 KiB at 128: cache-sized)

    def hash_shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(32-bit SHA-1 hash of every shingle of every text, shingle count per text).

        The same bytes as `shingles()` and `datasketch.hashfunc.sha1_hash32` (the first four
        digest bytes, little-endian), with the per-shingle work in C-level `map`s."""
        n = self.ngram
        sha1, digest, join = hashlib.sha1, methodcaller("digest"), b" ".join
        digests: list[bytes] = []
        counts = np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            words = text.lower().split()
            if not words:
                continue
            # Words hold no whitespace, so joining with b" " and splitting again is exact.
            wb = " ".join(words).encode().split(b" ")
            grams = [join(wb)] if len(wb) <= n else map(join, zip(*[wb[k:] for k in range(n)]))
            got = list(map(digest, map(sha1, grams)))
            counts[i] = len(got)
            digests.extend(got)
        if not digests:
            return np.zeros(0, dtype=np.uint32), counts
        raw = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 20)[:, :4]
        return np.ascontiguousarray(raw).view("<u4").ravel(), counts

    def sign_hashes(self, hv: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Signatures from shingle hashes grouped by document (`counts` per document)."""
        n_docs = len(counts)
        sig = np.full((n_docs, self.num_perm), _EMPTY, dtype=np.uint32)
        if not hv.size:
            return sig
        mixed = _fmix32(hv.astype(np.uint32, copy=False))
        ends = np.cumsum(counts)
        starts = ends - counts
        nonempty = np.flatnonzero(counts)
        longest = int(counts.max())
        buf = np.empty((max(self.block_shingles, longest), self.num_perm), dtype=np.uint32)
        # Blocks of whole documents, each about `block_shingles` shingles.
        i = 0
        while i < len(nonempty):
            first = nonempty[i]
            limit = starts[first] + self.block_shingles
            j = int(np.searchsorted(ends[nonempty], limit, side="right"))
            j = max(j, i + 1)
            docs = nonempty[i:j]
            lo, hi = starts[docs[0]], ends[docs[-1]]
            phv = buf[: hi - lo]
            np.multiply(mixed[lo:hi, None], self.a[None, :], out=phv)  # wraps mod 2^32, as datasketch
            np.add(phv, self.b[None, :], out=phv)
            sig[docs] = np.minimum.reduceat(phv, starts[docs] - lo, axis=0)
            i = j
        return sig

    def sign(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        hv, counts = self.hash_shingles(texts)
        return self.sign_hashes(hv, counts), counts > 0


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per document and band (uint64 [n, bands]): a mix of the band's rows."""
    n = sig.shape[0]
    v = np.asarray(sig[:, : bands * rows], dtype=np.uint32).reshape(n, bands, rows).astype(np.uint64)
    h = np.full((n, bands), _K1, dtype=np.uint64)
    for r in range(rows):
        h = (h ^ v[:, :, r]) * _K2
        h ^= h >> np.uint64(29)
    h = (h ^ (h >> np.uint64(32))) * _K3
    return h ^ (h >> np.uint64(31))


class SignatureRows:
    """Row access over signatures split in several arrays (one per worker part, maybe memmaps)."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def row(self, i: int) -> np.ndarray:
        p = int(np.searchsorted(self.starts, i, side="right")) - 1
        return np.asarray(self.parts[p][i - self.starts[p]])

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows `idx` (sorted ascending) as one in-memory array."""
        out = np.empty((len(idx), self.parts[0].shape[1] if self.parts else 0), dtype=np.uint32)
        for p, arr in enumerate(self.parts):
            lo, hi = np.searchsorted(idx, [self.starts[p], self.starts[p + 1]])
            if hi > lo:
                out[lo:hi] = arr[idx[lo:hi] - self.starts[p]]
        return out


def jaccard_count(threshold: float, num_perm: int) -> int:
    """Least number of equal hash values c with c / num_perm >= threshold (datasketch's jaccard)."""
    need = int(np.ceil(threshold * num_perm))
    while need > 0 and (need - 1) / num_perm >= threshold:
        need -= 1
    while need / num_perm < threshold:
        need += 1
    return need


def near_duplicates(
    sigs: np.ndarray | SignatureRows,
    candidates: np.ndarray,
    bands: int,
    rows: int,
    threshold: float,
    verify: bool = True,
    chunk: int = 1 << 16,
) -> np.ndarray:
    """Positions (a subset of `candidates`, ascending) that are near-duplicates of an earlier
    kept position. `candidates`: ascending positions taking part (kept so far, signed)."""
    rows_of = sigs if isinstance(sigs, SignatureRows) else SignatureRows([sigs])
    candidates = np.asarray(candidates, dtype=np.int64)
    n = len(candidates)
    if n < 2:
        return np.empty(0, dtype=np.int64)
    num_perm = rows_of.parts[0].shape[1]
    need = jaccard_count(threshold, num_perm)

    # Band keys, computed in chunks of documents (the signatures may be a memory map).
    keys = np.empty((n, bands), dtype=np.uint64)
    for lo in range(0, n, chunk):
        keys[lo : lo + chunk] = band_keys(rows_of.take(candidates[lo : lo + chunk]), bands, rows)

    # Per band: the documents in a bucket of two or more, with a bucket id unique over bands.
    member_doc: list[np.ndarray] = []
    member_bucket: list[np.ndarray] = []
    next_id = 0
    for j in range(bands):
        _, inverse, counts = np.unique(keys[:, j], return_inverse=True, return_counts=True)
        multi = counts[inverse] > 1
        member_doc.append(np.flatnonzero(multi))
        member_bucket.append(inverse[multi] + next_id)
        next_id += len(counts)
    del keys
    docs = np.concatenate(member_doc)
    buckets = np.concatenate(member_bucket)
    if not len(docs):
        return np.empty(0, dtype=np.int64)
    order = np.argsort(docs, kind="stable")
    docs = docs[order].tolist()
    buckets = buckets[order].tolist()

    # Greedy pass in document order over documents sharing some bucket.
    kept_in: dict[int, list[int]] = {}
    dups: list[int] = []
    cand = candidates.tolist()
    i = 0
    total = len(docs)
    while i < total:
        d = docs[i]
        j = i
        while j < total and docs[j] == d:
            j += 1
        mine = buckets[i:j]
        dup = False
        checked: set[int] = set()
        mine_sig = None
        for bk in mine:
            for other in kept_in.get(bk, ()):
                if other in checked:
                    continue
                checked.add(other)
                if not verify:
                    dup = True
                    break
                if mine_sig is None:
                    mine_sig = rows_of.row(cand[d])
                if np.count_nonzero(mine_sig == rows_of.row(cand[other])) >= need:
                    dup = True
                    break
            if dup:
                break
        if dup:
            dups.append(d)
        else:
            for bk in mine:
                kept_in.setdefault(bk, []).append(d)
        i = j
    return candidates[np.asarray(dups, dtype=np.int64)] if dups else np.empty(0, dtype=np.int64)
