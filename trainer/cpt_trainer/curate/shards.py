"""Packed token shards: `<split>-NNNNN.bin` (raw little-endian uint16/uint32 ids, each document
followed by EOS), `<split>-NNNNN.idx` (npy int64, documents + 1 token offsets: document i is
`bin[idx[i]:idx[i+1]]`, EOS included) and `<split>-NNNNN.ids` (npy int64, the source key of each
document: file index << 40 | record). Every file is written under a temporary name and
renamed (or uploaded) only when whole; the .bin goes last, after its index."""

from __future__ import annotations

import hashlib
import io
import re

import numpy as np

from cpt_trainer.curate.storage import OutputStore

SHARD_NAME = re.compile(r"^(train|eval)-\d{5}\.(bin|idx|ids)$")
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class SplitWriter:
    """Appends documents to the shards of one split, rolling over at `shard_tokens` tokens."""

    def __init__(self, store: OutputStore, split: str, dtype: str, eos_id: int, shard_tokens: int):
        self.store = store
        self.split = split
        self.dtype = _DTYPES[dtype]
        self.eos_id = eos_id
        self.shard_tokens = shard_tokens
        self.entries: list[dict] = []
        self._fh = None

    def _start(self) -> None:
        self._name = f"{self.split}-{len(self.entries):05d}.bin"
        self._staged = self.store.staging_path(self._name)
        self._fh = open(self._staged, "wb")
        self._sha = hashlib.sha256()
        self._offsets = [0]
        self._keys: list[int] = []
        self._tokens = 0

    def add(self, key: int, tokens: np.ndarray) -> None:
        if self._fh is None:
            self._start()
        arr = np.empty(len(tokens) + 1, dtype=self.dtype)
        arr[:-1] = tokens
        arr[-1] = self.eos_id
        data = arr.tobytes()
        self._fh.write(data)
        self._sha.update(data)
        self._tokens += len(arr)
        self._offsets.append(self._tokens)
        self._keys.append(key)
        if self._tokens >= self.shard_tokens:
            self._finish()

    def _finish(self) -> None:
        self._fh.close()
        self._fh = None
        stem = self._name[: -len(".bin")]
        idx = _npy_bytes(np.asarray(self._offsets, dtype=np.int64))
        ids = _npy_bytes(np.asarray(self._keys, dtype=np.int64))
        self.store.write_bytes(stem + ".idx", idx)
        self.store.write_bytes(stem + ".ids", ids)
        self.store.commit(self._name, self._staged)
        self.entries.append(
            {
                "file": self._name,
                "tokens": self._tokens,
                "documents": len(self._keys),
                "sha256": self._sha.hexdigest(),
                "index": stem + ".idx",
                "index_sha256": hashlib.sha256(idx).hexdigest(),
                "ids": stem + ".ids",
            }
        )

    def close(self) -> list[dict]:
        if self._fh is not None:
            self._finish()
        return self.entries
