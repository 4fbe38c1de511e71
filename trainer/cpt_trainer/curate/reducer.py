"""The reduce step, over every worker's part in corpus order: the quality decision, exact
dedup (first occurrence of a content hash), MinHash-LSH near-dedup across all slices, the
evaluation split, the packed shards and the manifest. It holds the per-document metadata
(41 bytes a document) and one band key per document and band; signatures and tokens are
read from the parts (memory-mapped), one part at a time for the tokens."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

from cpt_trainer.contract.config import CurationConfig
from cpt_trainer.curate.errors import CurationInputError
from cpt_trainer.curate.mapper import META, part_name
from cpt_trainer.curate.minhash import SignatureRows, lsh_params, near_duplicates
from cpt_trainer.curate.shards import SHARD_NAME, SplitWriter
from cpt_trainer.curate.storage import OutputStore, iter_stale_temporaries
from cpt_trainer.curate.tokenization import CorpusTokenizer, TokenizerSample, analyse

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
EXTENSION_FILE = "tokenizer-extension.json"
INPUTS_FILE = "inputs.json"
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix(x: np.ndarray, seed: int) -> np.ndarray:
    z = x ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def eval_mask(h0: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Held-out documents, chosen by content hash and seed (the same at any parallelism);
    at least one when `fraction` > 0 and there are two or more documents."""
    if fraction <= 0 or not len(h0):
        return np.zeros(len(h0), dtype=bool)
    u = _splitmix(h0.astype(np.uint64), seed)
    mask = u < np.uint64(int(fraction * (1 << 64)))
    if not mask.any() and len(h0) >= 2:
        mask[int(np.argmin(u))] = True
    return mask


def _stage(enabled: bool, n_in: int, removed: int, **extra) -> dict:
    return {"enabled": enabled, "input": int(n_in), "kept": int(n_in - removed), "removed": int(removed), **extra}


class Reducer:
    def __init__(self, cfg: CurationConfig, store: OutputStore, work: str, tokenizer: CorpusTokenizer,
                 fingerprint: str, inputs: list[dict]):  # fmt: skip
        self.cfg = cfg
        self.store = store
        self.work = work
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self.inputs = inputs

    def run(self) -> dict:
        cfg, st, store = self.cfg, self.cfg.stages, self.store
        started = time.monotonic()
        K = cfg.parallelism
        parts = []
        for k in range(K):
            raw = store.read_bytes(part_name(self.work, k, "json"))
            if raw is None:
                raise RuntimeError(f"reduce: part {k} of {K} is missing in {store.join(self.work)}")
            parts.append(json.loads(raw))
        metas, meta_paths = [], []
        for k in range(K):
            path = store.fetch(part_name(self.work, k, "meta"))
            metas.append(np.fromfile(path, dtype=META))
            meta_paths.append(path)
        meta = np.concatenate(metas) if metas else np.zeros(0, dtype=META)
        part_starts = np.cumsum([0] + [len(m) for m in metas])
        n = len(meta)
        alive = np.ones(n, dtype=bool)
        stages: dict = {}
        self._map_stages(parts, stages)
        if stages["read"]["kept"] == 0:
            reasons = Counter()
            for p in parts:
                reasons.update(p["counts"]["skipped_by_reason"])
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "the files hold no records"
            raise CurationInputError(f"no documents could be read from {len(self.inputs)} input files ({detail})")

        # quality_filter
        qf = st.quality_filter
        if qf.enabled:
            ppl = meta["ppl"].astype(np.float64)
            bad = ppl > qf.max_perplexity
            if qf.min_perplexity is not None:
                bad |= ppl < qf.min_perplexity
            scored = ppl[~np.isnan(ppl)]
            alive &= ~bad
            pct = {f"p{q}": round(float(np.percentile(scored, q)), 3) for q in (10, 50, 90)} if len(scored) else {}
            stages["quality_filter"] = _stage(True, n, int(bad.sum()), unscored=int(np.isnan(ppl).sum()), perplexity=pct)
        else:
            stages["quality_filter"] = _stage(False, n, 0)

        # exact_dedup: first occurrence of each content hash
        n_in = int(alive.sum())
        if st.exact_dedup.enabled:
            idx = np.flatnonzero(alive)
            pair = np.empty(len(idx), dtype=[("a", "<u8"), ("b", "<u8")])
            pair["a"], pair["b"] = meta["h0"][idx], meta["h1"][idx]
            _, first = np.unique(pair, return_index=True)
            dup = np.ones(len(idx), dtype=bool)
            dup[first] = False
            alive[idx[dup]] = False
            stages["exact_dedup"] = _stage(True, n_in, int(dup.sum()))
        else:
            stages["exact_dedup"] = _stage(False, n_in, 0)

        # near_dedup across all slices
        nd = st.near_dedup
        n_in = int(alive.sum())
        sig_paths: list[Path] = []
        if nd.enabled:
            bands, rows = (nd.bands, nd.rows) if nd.bands else lsh_params(nd.threshold, nd.num_perm,
                                                                          nd.false_positive_weight, nd.false_negative_weight)  # fmt: skip
            sigs = []
            for k in range(K):
                path = store.fetch(part_name(self.work, k, "sig"))
                sig_paths.append(path)
                count = len(metas[k])
                sigs.append(np.memmap(path, dtype="<u4", mode="r", shape=(count, nd.num_perm)) if count
                            else np.zeros((0, nd.num_perm), dtype="<u4"))  # fmt: skip
            cand = np.flatnonzero(alive & (meta["signed"] == 1))
            t0 = time.monotonic()
            dups = near_duplicates(SignatureRows(sigs), cand, bands, rows, nd.threshold, nd.verify)
            alive[dups] = False
            log.info("near dedup: %d of %d documents are near-duplicates (%d bands x %d rows, %.1f s)",
                     len(dups), len(cand), bands, rows, time.monotonic() - t0)  # fmt: skip
            stages["near_dedup"] = _stage(True, n_in, len(dups), bands=bands, rows=rows, unsigned=int(n_in - len(cand)))
            del sigs
        else:
            stages["near_dedup"] = _stage(False, n_in, 0)

        kept = np.flatnonzero(alive)
        if not len(kept):
            raise CurationInputError(
                "no documents left after curation: " + ", ".join(f"{k} removed {v['removed']}" for k, v in stages.items()
                                                                 if isinstance(v, dict) and v.get("removed"))  # fmt: skip
            )
        is_eval = np.zeros(n, dtype=bool)
        is_eval[kept] = eval_mask(meta["h0"][kept], cfg.eval_fraction, cfg.seed)

        # The output is not complete while it is rewritten.
        store.delete([MANIFEST])
        stale_tmp = list(iter_stale_temporaries(store))
        if stale_tmp:
            log.info("removing %d temporary files of an interrupted run", len(stale_tmp))
            store.delete(stale_tmp)
        writers = {s: SplitWriter(store, s, self.tokenizer.dtype, self.tokenizer.eos_id, cfg.shard_tokens)
                   for s in ("train", "eval")}  # fmt: skip
        for k in range(K):
            lo, hi = part_starts[k], part_starts[k + 1]
            if hi == lo or not alive[lo:hi].any():
                continue
            path = store.fetch(part_name(self.work, k, "tok"))
            tok = np.memmap(path, dtype="<u4", mode="r") if path.stat().st_size else np.zeros(0, dtype="<u4")
            offsets = np.concatenate([[0], np.cumsum(meta["tokens"][lo:hi])])
            for i in np.flatnonzero(alive[lo:hi]).tolist():
                g = lo + i
                writers["eval" if is_eval[g] else "train"].add(int(meta["key"][g]), tok[offsets[i] : offsets[i + 1]])
            del tok
            store.release(path)
        splits = {s: w.close() for s, w in writers.items()}
        for path in meta_paths + sig_paths:
            store.release(path)

        written = {e[key] for entries in splits.values() for e in entries for key in ("file", "index", "ids")}
        stale = [nm for nm in store.list("") if "/" not in nm and SHARD_NAME.match(nm) and nm not in written]
        if stale:
            store.delete(stale)

        stages["split"] = {
            "input": int(len(kept)),
            "kept": int(len(kept)),
            "removed": 0,
            "train_documents": int(sum(e["documents"] for e in splits["train"])),
            "eval_documents": int(sum(e["documents"] for e in splits["eval"])),
        }
        analysis = None
        if cfg.tokenizer_analysis.enabled:
            sample = TokenizerSample.merged([p["sample"] for p in parts if p.get("sample")])
            analysis = analyse(sample, self.tokenizer, cfg.tokenizer_analysis)
            store.write_bytes(EXTENSION_FILE, json.dumps({"tokens": analysis["proposed_extension"]}, indent=1).encode())
        skipped, by_reason = [], Counter()
        for p in parts:
            skipped.extend(p["counts"]["skipped"])
            by_reason.update(p["counts"]["skipped_by_reason"])
        store.write_bytes(INPUTS_FILE, json.dumps(self.inputs, indent=0).encode())
        manifest = {
            "version": 1,
            "dtype": self.tokenizer.dtype,
            "vocab_size": self.tokenizer.vocab_size,
            "eos_id": self.tokenizer.eos_id,
            "tokenizer": self.tokenizer.identity(),
            "splits": splits,
            "documents": {"train": stages["split"]["train_documents"], "eval": stages["split"]["eval_documents"]},
            "tokens": {s: int(sum(e["tokens"] for e in entries)) for s, entries in splits.items()},
            "stages": stages,
            "skipped": skipped[:1000],
            "skipped_by_reason": dict(sorted(by_reason.items())),
            "skipped_total": int(sum(by_reason.values())),
            "tokenizer_analysis": analysis,
            "inputs": {"files": len(self.inputs), "listing": INPUTS_FILE},
            "document_key": "file index << 40 | record index; file index into inputs.json",
            "parallelism": K,
            "config_fingerprint": self.fingerprint,
            "settings": json.loads(cfg.stages.model_dump_json()),
        }
        store.write_bytes(MANIFEST, json.dumps(manifest, indent=1, sort_keys=False).encode())
        if not cfg.keep_work:
            store.delete_tree(self.work.split("/", 1)[0] + "/")  # this run's parts and stale ones of older runs
        log.info("reduce: %d documents (%d train, %d eval), %d train tokens in %d shards, %.1f s",
                 len(kept), manifest["documents"]["train"], manifest["documents"]["eval"], manifest["tokens"]["train"],
                 len(splits["train"]), time.monotonic() - started)  # fmt: skip
        return manifest

    def _map_stages(self, parts: list[dict], stages: dict) -> None:
        st = self.cfg.stages
        total: dict[str, Counter] = {k: Counter() for k in ("normalize", "pii", "pii_kinds", "language", "length")}
        for p in parts:
            for k in total:
                total[k].update(p["counts"][k])
        records = sum(p["counts"]["records"] for p in parts)
        docs = sum(p["counts"]["documents_in"] for p in parts)
        stages["read"] = {
            "input": records,
            "kept": docs,
            "removed": sum(p["counts"]["skipped_records"] for p in parts),
            "files_unreadable": sum(p["counts"]["files_unreadable"] for p in parts),
        }
        n = docs
        nz = total["normalize"]
        stages["normalize"] = _stage(st.normalize.enabled, n, nz["removed"], modified=nz["modified"])
        n -= nz["removed"]
        stages["pii"] = _stage(st.pii.enabled, n, 0, modified=total["pii"]["modified"],
                               counts=dict(sorted(total["pii_kinds"].items())))  # fmt: skip
        lg = total["language"]
        stages["language"] = _stage(st.language.enabled, n, lg["removed"])
        n -= lg["removed"]
        ln = total["length"]
        stages["length_filter"] = _stage(st.length_filter.enabled, n, ln["too_short"] + ln["too_long"],
                                         too_short=ln["too_short"], too_long=ln["too_long"])  # fmt: skip
