"""`cpt-trainer curate --config FILE`: one worker of the curation Job.

stage "all" (the default): map this worker's slice; worker 0 then waits for every slice's
done marker and runs the reduce step (cross-slice dedup, shards, manifest). With
parallelism 1 that is one process doing both. "map" / "reduce" split the two for an
operator that runs the reduce as its own Job. A rerun resumes: finished parts are reused,
a finished output (same config fingerprint) is left alone. Exit codes: 0 done, 2 bad config
or input (one clear line on stderr), 1 anything else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time

from cpt_trainer.contract.config import ConfigError, CurationConfig, load_config
from cpt_trainer.curate.errors import CurationInputError
from cpt_trainer.curate.mapper import SliceMapper, part_name, slice_files
from cpt_trainer.curate.reducer import MANIFEST, Reducer
from cpt_trainer.curate.status import encode, stage_list, write_termination_message
from cpt_trainer.curate.storage import OutputStore, fetch_to_local, list_inputs
from cpt_trainer.curate.tokenization import CorpusTokenizer

log = logging.getLogger("cpt_trainer.curate")

STATUS_FILE = "status.json"
WORK_ROOT = "_work/"
POLL_S = 2.0
# Fields that do not change what the output contains.
_NOT_CONTENT = {"worker_index", "stage", "reduce_wait_seconds", "keep_work", "termination_message_path", "output_uri",
                "identity"}  # fmt: skip


def fingerprint(cfg: CurationConfig, inputs: list[dict]) -> str:
    """Identifies the output's content: the settings and the listed input files (uri, size)."""
    body = {"config": cfg.model_dump(mode="json", exclude=_NOT_CONTENT), "inputs": inputs}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def worker_index(cfg: CurationConfig) -> int:
    if cfg.worker_index is not None:
        return cfg.worker_index
    env = os.environ.get("JOB_COMPLETION_INDEX")
    if env is None:
        return 0
    try:
        index = int(env)
    except ValueError:
        raise CurationInputError(f"JOB_COMPLETION_INDEX={env!r} is not an integer") from None
    if not 0 <= index < cfg.parallelism:
        raise CurationInputError(f"JOB_COMPLETION_INDEX={index} is outside parallelism {cfg.parallelism}")
    return index


def status_from_manifest(manifest: dict, store: OutputStore, worker: int, elapsed: float) -> dict:
    analysis = manifest.get("tokenizer_analysis") or {}
    return {
        "phase": "Succeeded",
        "worker": worker,
        "parallelism": manifest.get("parallelism"),
        "output_uri": store.uri,
        "manifest_uri": store.join(MANIFEST),
        "documents": manifest["documents"]["train"] + manifest["documents"]["eval"],
        "tokens": manifest["tokens"]["train"],
        "eval_tokens": manifest["tokens"]["eval"],
        "shards": len(manifest["splits"]["train"]),
        "eval_shards": len(manifest["splits"]["eval"]),
        "stages": stage_list(manifest["stages"]),
        "pii": manifest["stages"]["pii"].get("counts", {}),
        "skipped": manifest.get("skipped_total", 0),
        "skipped_by_reason": manifest.get("skipped_by_reason", {}),
        "tokenizer": {
            "chars_per_token": analysis.get("chars_per_token"),
            "fertility": analysis.get("fertility"),
            "proposed_extension": analysis.get("proposed_extension", []),
            "proposed_extension_uri": store.join("tokenizer-extension.json") if analysis else None,
        },
        "elapsed_s": round(elapsed, 1),
    }


class CurationJob:
    def __init__(self, cfg: CurationConfig):
        self.cfg = cfg
        self.worker = worker_index(cfg)
        self.started = time.monotonic()
        self.store: OutputStore | None = None

    def run(self) -> dict:
        cfg = self.cfg
        files = list_inputs(cfg.sources, cfg.s3)
        if not files:
            raise CurationInputError("empty corpus: no input files match " + ", ".join(s.uri for s in cfg.sources))
        inputs = [{"index": f.index, "uri": f.uri, "size": f.size} for f in files]
        fp = fingerprint(cfg, inputs)
        self.store = store = OutputStore(cfg.output_uri, cfg.s3)
        work = f"{WORK_ROOT}{fp[:16]}/"
        existing = store.read_bytes(MANIFEST)
        if existing is not None:
            manifest = json.loads(existing)
            if manifest.get("config_fingerprint") == fp:
                log.info("output %s is already complete for this config and input; nothing to do", store.uri)
                return self._done(manifest, write_status=self.worker == 0)

        with tempfile.TemporaryDirectory(prefix="cpt-curate-") as tmp:
            tok_local = fetch_to_local(cfg.tokenizer_uri, cfg.s3, tmp)
            tokenizer = CorpusTokenizer(tok_local, cfg.tokenizer_uri, cfg.eos_token)
            if cfg.stage in ("all", "map"):
                if store.exists(part_name(work, self.worker, "done")):
                    log.info("map %d: part already complete, reused", self.worker)
                else:
                    scorer = self._scorer(tmp)
                    mine = slice_files(files, cfg.parallelism, self.worker)
                    log.info("map %d of %d: %d of %d input files", self.worker, cfg.parallelism, len(mine), len(files))
                    SliceMapper(cfg, store, work, tokenizer, scorer).run(self.worker, mine)
                if cfg.stage == "map" or self.worker != 0:
                    return {"phase": "Mapped", "worker": self.worker, "parallelism": cfg.parallelism,
                            "output_uri": store.uri, "elapsed_s": round(time.monotonic() - self.started, 1)}  # fmt: skip
            self._wait_for_parts(store, work)
            manifest = Reducer(cfg, store, work, tokenizer, fp, inputs).run()
        return self._done(manifest, write_status=True)

    def _scorer(self, tmp: str):
        qf = self.cfg.stages.quality_filter
        if not qf.enabled:
            return None
        from cpt_trainer.curate.quality import PerplexityScorer

        model_dir = fetch_to_local(qf.model_uri, self.cfg.s3, tmp)
        return PerplexityScorer(model_dir, qf.batch_size, qf.max_length, qf.device)

    def _wait_for_parts(self, store: OutputStore, work: str) -> None:
        K = self.cfg.parallelism
        deadline = time.monotonic() + self.cfg.reduce_wait_seconds
        logged = 0.0
        while True:
            missing = [k for k in range(K) if not store.exists(part_name(work, k, "done"))]
            if not missing:
                return
            now = time.monotonic()
            if now >= deadline:
                raise RuntimeError(f"reduce: slices {missing} did not finish within {self.cfg.reduce_wait_seconds:.0f} s")
            if now - logged > 60:
                log.info("reduce: waiting for %d of %d slices (%s)", len(missing), K, missing[:10])
                logged = now
            time.sleep(POLL_S)

    def _done(self, manifest: dict, write_status: bool) -> dict:
        status = status_from_manifest(manifest, self.store, self.worker, time.monotonic() - self.started)
        if write_status:
            self.store.write_bytes(STATUS_FILE, encode(status).encode())
        return status


def _setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _fail(cfg: CurationConfig | None, job: CurationJob | None, message: str) -> None:
    status = {"phase": "Failed", "error": message}
    if job is not None:
        status["worker"] = job.worker
    text = encode(status)
    write_termination_message(cfg.termination_message_path if cfg else "/dev/termination-log", text)
    if job is not None and job.store is not None and job.worker == 0:
        try:
            job.store.write_bytes(STATUS_FILE, text.encode())
        except Exception:  # the failure being reported matters more
            log.exception("could not write %s", STATUS_FILE)


def run_curate(path: str) -> int:
    """Run one curation worker from a CurationConfig JSON file; returns the exit code."""
    _setup_logging()
    cfg = job = None
    try:
        cfg = load_config(path, CurationConfig)
        job = CurationJob(cfg)
        status = job.run()
    except (ConfigError, CurationInputError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"cpt-trainer curate: {message}", file=sys.stderr)
        _fail(cfg, job, message)
        return 2
    except Exception as exc:
        log.exception("curation failed")
        _fail(cfg, job, f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        if job is not None and job.store is not None:
            job.store.close()
    write_termination_message(cfg.termination_message_path, encode(status))
    log.info("curation %s: %s", status["phase"], json.dumps({k: status[k] for k in ("documents", "tokens", "shards")
                                                              if k in status}))  # fmt: skip
    return 0
