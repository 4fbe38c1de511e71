"""The map step: one worker's slice of the input files, streamed in chunks through the
per-document stages (normalize -> pii -> language -> length_filter), then tokenized, hashed,
MinHash-signed and perplexity-scored. It writes its part of the work folder:

  part-KKKKK.tok   uint32 token ids of the surviving documents, concatenated (no EOS)
  part-KKKKK.meta  one META record per surviving document (key, content hash, tokens, ppl)
  part-KKKKK.sig   uint32 [documents, num_perm] MinHash signatures (near_dedup only)
  part-KKKKK.json  stage counts, skipped records, tokenizer-analysis sample
  part-KKKKK.done  written last: the part is complete

Nothing but the current chunk is held in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from cpt_trainer.contract.config import CurationConfig
from cpt_trainer.curate.minhash import MinHashSigner
from cpt_trainer.curate.pii import PiiScrubber
from cpt_trainer.curate.reader import Document, Skip, iter_documents
from cpt_trainer.curate.storage import InputFile, OutputStore
from cpt_trainer.curate.textclean import ScriptFilter, clean_text
from cpt_trainer.curate.tokenization import CorpusTokenizer, TokenizerSample

log = logging.getLogger(__name__)

META = np.dtype([("key", "<i8"), ("h0", "<u8"), ("h1", "<u8"), ("tokens", "<i8"), ("ppl", "<f4"), ("signed", "u1")])
CHUNK_DOCS = 1024
MAX_SKIPS_LISTED = 1000
LOG_EVERY_S = 30.0


def part_name(work: str, worker: int, ext: str) -> str:
    return f"{work}part-{worker:05d}.{ext}"


def slice_files(files: list[InputFile], parallelism: int, worker: int) -> list[InputFile]:
    """Worker `worker`'s contiguous run of files, balanced by bytes (slices follow corpus order)."""
    sizes = [max(f.size, 1) for f in files]
    total = sum(sizes)
    out, before = [], 0
    for f, size in zip(files, sizes):
        owner = min(parallelism - 1, int((before + size / 2) * parallelism // total))
        if owner == worker:
            out.append(f)
        before += size
    return out


@dataclass
class MapCounts:
    records: int = 0
    documents_in: int = 0
    skipped_records: int = 0
    files_unreadable: int = 0
    skipped: list[dict] = field(default_factory=list)
    skipped_by_reason: Counter = field(default_factory=Counter)
    normalize: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    pii_kinds: Counter = field(default_factory=Counter)
    language: Counter = field(default_factory=Counter)
    length: Counter = field(default_factory=Counter)
    documents_out: int = 0
    tokens_out: int = 0

    def skip(self, s: Skip) -> None:
        self.skipped_by_reason[s.reason] += 1
        if len(self.skipped) < MAX_SKIPS_LISTED:
            self.skipped.append(s.to_dict())

    def to_dict(self) -> dict:
        return {
            "records": self.records,
            "documents_in": self.documents_in,
            "skipped_records": self.skipped_records,
            "files_unreadable": self.files_unreadable,
            "skipped": self.skipped,
            "skipped_by_reason": dict(self.skipped_by_reason),
            "normalize": dict(self.normalize),
            "pii": dict(self.pii),
            "pii_kinds": dict(self.pii_kinds),
            "language": dict(self.language),
            "length": dict(self.length),
            "documents_out": self.documents_out,
            "tokens_out": self.tokens_out,
        }


class SliceMapper:
    """Runs the map step of one worker."""

    def __init__(self, cfg: CurationConfig, store: OutputStore, work: str, tokenizer: CorpusTokenizer, scorer=None):
        self.cfg = cfg
        self.store = store
        self.work = work
        self.tokenizer = tokenizer
        st = cfg.stages
        self.pii = PiiScrubber(st.pii) if st.pii.enabled else None
        self.script = ScriptFilter(st.language.scripts, st.language.min_fraction) if st.language.enabled else None
        nd = st.near_dedup
        self.signer = MinHashSigner(nd.num_perm, nd.ngram, nd.seed) if nd.enabled else None
        self.scorer = scorer
        self.sample = TokenizerSample(cfg.tokenizer_analysis.sample_fraction) if cfg.tokenizer_analysis.enabled else None
        self.counts = MapCounts()

    def run(self, worker: int, files: list[InputFile]) -> dict:
        names = {ext: part_name(self.work, worker, ext) for ext in ("tok", "meta", "sig")}
        staged = {ext: self.store.staging_path(name) for ext, name in names.items()}
        self._fh = {ext: open(path, "wb") for ext, path in staged.items()}
        started = last_log = time.monotonic()
        bar = _progress(f"curate map {worker}")
        try:
            chunk: list[Document] = []
            for file in files:
                for item in iter_documents(file, self.cfg.format, self.cfg.text_field, self.cfg.text_unit, self.cfg.s3):
                    if isinstance(item, Skip):
                        if item.record is not None and item.reason != "read_error":
                            self.counts.records += 1
                            self.counts.skipped_records += 1
                        else:
                            self.counts.files_unreadable += 1
                        self.counts.skip(item)
                        log.warning("skipped %s record %s: %s (%s)", item.uri, item.record, item.reason, item.detail)
                        continue
                    self.counts.records += 1
                    self.counts.documents_in += 1
                    chunk.append(item)
                    if len(chunk) >= CHUNK_DOCS:
                        self._process(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                        chunk = []
                        now = time.monotonic()
                        if now - last_log >= LOG_EVERY_S:
                            last_log = now
                            log.info("map %d: %d documents read (%.0f/s)", worker, self.counts.records,
                                     self.counts.records / (now - started))  # fmt: skip
            if chunk:
                self._process(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            for fh in self._fh.values():
                fh.close()
            if bar is not None:
                bar.close()
        for ext, name in names.items():
            self.store.commit(name, staged[ext])
        summary = {"worker": worker, "files": [f.uri for f in files], "counts": self.counts.to_dict(),
                   "sample": self.sample.to_dict() if self.sample else None}  # fmt: skip
        self.store.write_bytes(part_name(self.work, worker, "json"), json.dumps(summary).encode())
        self.store.write_bytes(
            part_name(self.work, worker, "done"),
            json.dumps({"worker": worker, "documents": self.counts.documents_out}).encode(),
        )
        elapsed = time.monotonic() - started
        log.info("map %d: %d records, %d documents kept for the reduce step, %d skipped, %.1f s (%.0f docs/s)",
                 worker, self.counts.records, self.counts.documents_out, sum(self.counts.skipped_by_reason.values()),
                 elapsed, self.counts.records / elapsed if elapsed else 0.0)  # fmt: skip
        return summary

    def _process(self, chunk: list[Document]) -> None:
        st = self.cfg.stages
        c = self.counts
        texts: list[str] = []
        keys: list[int] = []
        for doc in chunk:
            text = doc.text
            if st.normalize.enabled:
                c.normalize["input"] += 1
                cleaned = clean_text(text, st.normalize.form)
                if not cleaned:
                    c.normalize["removed"] += 1
                    continue
                if cleaned != text:
                    c.normalize["modified"] += 1
                text = cleaned
            if self.pii is not None:
                c.pii["input"] += 1
                text, found = self.pii.scrub(text)
                if found:
                    c.pii["modified"] += 1
                    c.pii_kinds.update(found)
            if self.script is not None:
                c.language["input"] += 1
                if not self.script.keep(text):
                    c.language["removed"] += 1
                    continue
            texts.append(text)
            keys.append(doc.key)
        if not texts:
            return
        ids = self.tokenizer.encode_batch(texts)
        lf = st.length_filter
        if lf.enabled:
            keep = []
            for i, t in enumerate(ids):
                c.length["input"] += 1
                if len(t) < lf.min_tokens:
                    c.length["too_short"] += 1
                elif len(t) > lf.max_tokens:
                    c.length["too_long"] += 1
                else:
                    keep.append(i)
            c.length["removed"] = c.length["too_short"] + c.length["too_long"]
            if len(keep) < len(ids):
                texts = [texts[i] for i in keep]
                keys = [keys[i] for i in keep]
                ids = [ids[i] for i in keep]
        if not texts:
            return
        meta = np.zeros(len(texts), dtype=META)
        meta["key"] = keys
        digests = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=16).digest() for t in texts)
        hashes = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
        meta["h0"], meta["h1"] = hashes[:, 0], hashes[:, 1]
        meta["tokens"] = [len(t) for t in ids]
        meta["ppl"] = np.nan
        if self.scorer is not None:
            meta["ppl"] = self.scorer.score(texts)
        if self.signer is not None:
            sig, signed = self.signer.sign(texts)
            meta["signed"] = signed
            self._fh["sig"].write(sig.tobytes())
        if self.sample is not None:
            for i, t in enumerate(texts):
                if self.sample.selects(int(meta["h0"][i])):
                    self.sample.add(t, len(ids[i]))
        flat = np.concatenate([np.asarray(t, dtype="<u4") for t in ids])
        self._fh["tok"].write(flat.tobytes())
        self._fh["meta"].write(meta.tobytes())
        c.documents_out += len(texts)
        c.tokens_out += len(flat)


def _progress(desc: str):
    """A tqdm bar with rate when stderr is a terminal; None otherwise (pods log instead)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(desc=desc, unit="doc", unit_scale=True, file=sys.stderr)
