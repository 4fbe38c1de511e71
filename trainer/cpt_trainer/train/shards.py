"""Reading (and, for tests and re-tokenisation, writing) the token shards curation produces.

A corpus output folder holds `manifest.json` and raw little-endian token arrays
`train-00000.bin`, ..., `eval-00000.bin` (uint16 when the vocabulary fits, else uint32):
documents concatenated, each followed by the EOS id. A split is read as one long token
stream through `np.memmap`, so nothing is loaded into memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cpt_trainer.local_paths import PathOutsideFolder, resolve_inside
from cpt_trainer.train.errors import TrainerInputError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 65535 else "uint32"


@dataclass(frozen=True)
class ShardEntry:
    file: str
    tokens: int
    documents: int
    sha256: str = ""


@dataclass(frozen=True)
class Manifest:
    folder: Path
    dtype: str
    vocab_size: int
    eos_id: int
    tokenizer: dict
    splits: dict[str, list[ShardEntry]]

    def tokens(self, split: str) -> int:
        return sum(s.tokens for s in self.splits.get(split, []))


def read_manifest(folder: str | Path) -> Manifest:
    """Parse and check `folder/manifest.json` (shard files present, sizes consistent)."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainerInputError(f"corpus manifest not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise TrainerInputError(f"corpus manifest {path} is not valid JSON: {exc}") from None
    try:
        if raw.get("version") != MANIFEST_VERSION:
            raise ValueError(f"version {raw.get('version')!r}, expected {MANIFEST_VERSION}")
        dtype = raw["dtype"]
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        splits = {
            name: [ShardEntry(e["file"], int(e["tokens"]), int(e.get("documents", 0)), e.get("sha256", "")) for e in entries]
            for name, entries in raw["splits"].items()
        }
        manifest = Manifest(folder, dtype, int(raw["vocab_size"]), int(raw["eos_id"]), dict(raw.get("tokenizer", {})), splits)
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainerInputError(f"corpus manifest {path} is malformed: {exc}") from None
    itemsize = _DTYPES[manifest.dtype].itemsize
    for entries in manifest.splits.values():
        for entry in entries:
            try:  # the manifest is the tenant's: a shard name must not reach files outside the corpus
                shard = resolve_inside(folder, entry.file)
            except PathOutsideFolder:
                raise TrainerInputError(f"shard {entry.file!r} named in {path} is outside the corpus folder: refused") from None
            if not shard.is_file():
                raise TrainerInputError(f"shard {shard} named in {path} is missing")
            if shard.stat().st_size != entry.tokens * itemsize:
                raise TrainerInputError(
                    f"shard {shard} has {shard.stat().st_size} bytes, manifest says {entry.tokens} {manifest.dtype} tokens"
                )
    return manifest


def check_matches_tokenizer(manifest: Manifest, vocab_size: int, eos_id: int | None, what: str) -> None:
    """Fail clearly when a corpus was tokenized with another vocabulary than the model's tokenizer."""
    if manifest.vocab_size != vocab_size:
        raise TrainerInputError(
            f"{what}: shards were tokenized with vocab_size {manifest.vocab_size}, the tokenizer has {vocab_size}"
        )
    if manifest.dtype != dtype_for_vocab(manifest.vocab_size):
        raise TrainerInputError(f"{what}: dtype {manifest.dtype} does not fit vocab_size {manifest.vocab_size}")
    if eos_id is not None and manifest.eos_id != eos_id:
        raise TrainerInputError(f"{what}: shards use eos_id {manifest.eos_id}, the tokenizer's is {eos_id}")
    # A cheap content check (the head of every shard) rather than a full scan of billions of tokens.
    for entries in manifest.splits.values():
        for entry in entries:
            head = np.fromfile(manifest.folder / entry.file, dtype=_DTYPES[manifest.dtype], count=1 << 20)
            if head.size and int(head.max()) >= vocab_size:
                raise TrainerInputError(f"{what}: {entry.file} holds token id {int(head.max())} >= vocab_size {vocab_size}")


class TokenStream:
    """One split of a corpus as a single read-only token sequence over memory-mapped shards."""

    def __init__(self, manifest: Manifest, split: str):
        dtype = _DTYPES[manifest.dtype]
        self._shards = [
            np.memmap(manifest.folder / e.file, dtype=dtype, mode="r") for e in manifest.splits.get(split, []) if e.tokens
        ]
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])
        self.split = split

    def __len__(self) -> int:
        return int(self._starts[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) as int64 (they may span shard boundaries)."""
        if start < 0 or start + length > len(self):
            raise IndexError(f"read [{start}, {start + length}) outside a stream of {len(self)} tokens")
        out = np.empty(length, dtype=np.int64)
        done = 0
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        while done < length:
            offset = start + done - int(self._starts[i])
            take = min(length - done, len(self._shards[i]) - offset)
            out[done : done + take] = self._shards[i][offset : offset + take]
            done += take
            i += 1
        return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_corpus(
    folder: str | Path,
    splits: dict[str, Sequence[Sequence[int]]],
    vocab_size: int,
    eos_id: int,
    tokenizer_info: dict | None = None,
    shard_tokens: int = 1 << 24,
) -> Path:
    """Write documents (lists of token ids, EOS appended here) as shards plus `manifest.json`.

    The trainer's own writer: tests build corpora with it, and re-tokenisation after a
    vocabulary extension writes its cache with it. Curation has its own writer of the same format.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dtype_name = dtype_for_vocab(vocab_size)
    dtype = _DTYPES[dtype_name]
    manifest_splits: dict[str, list[dict]] = {}
    for split, documents in splits.items():
        entries: list[dict] = []
        buffer: list[np.ndarray] = []
        held = docs = 0

        def flush() -> None:
            nonlocal buffer, held, docs
            if not buffer:
                return
            name = f"{split}-{len(entries):05d}.bin"
            np.concatenate(buffer).astype(dtype).tofile(folder / name)
            entries.append({"file": name, "tokens": held, "documents": docs, "sha256": _sha256(folder / name)})
            buffer, held, docs = [], 0, 0

        for doc in _with_eos(documents, eos_id):
            buffer.append(doc)
            held += len(doc)
            docs += 1
            if held >= shard_tokens:
                flush()
        flush()
        manifest_splits[split] = entries
    manifest = {
        "version": MANIFEST_VERSION,
        "dtype": dtype_name,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "tokenizer": tokenizer_info or {"name_or_path": "", "vocab_size": vocab_size, "sha256": ""},
        "splits": manifest_splits,
        "stages": {},
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder


def _with_eos(documents: Iterable[Sequence[int]], eos_id: int) -> Iterable[np.ndarray]:
    for doc in documents:
        yield np.append(np.asarray(doc, dtype=np.int64), eos_id)


def split_documents(stream: TokenStream, eos_id: int) -> Iterable[np.ndarray]:
    """The documents of a stream (EOS removed), read block by block."""
    block = 1 << 20
    pending = np.empty(0, dtype=np.int64)
    for start in range(0, len(stream), block):
        data = np.concatenate([pending, stream.read(start, min(block, len(stream) - start))])
        ends = np.flatnonzero(data == eos_id)
        prev = 0
        for end in ends:
            yield data[prev:end]
            prev = end + 1
        pending = data[prev:]
    if pending.size:
        yield pending
