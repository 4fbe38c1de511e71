"""Near-duplicate removal on 10,000 generated documents with planted duplicates of known
Jaccard similarity, at parallelism 1 and 4 (four real worker processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from curation_helpers import config, kept_keys, run_cli, write_config

pytestmark = pytest.mark.slow


def _dedup_config(folder, out, tokenizer_dir, tmp_path, **over):
    return config([str(folder)], str(out), str(tokenizer_dir), tmp_path, shard_tokens=1_000_000, **over)


@pytest.fixture(scope="session")
def serial_run(planted, tokenizer_dir, tmp_path_factory):
    corpus, folder = planted
    tmp = tmp_path_factory.mktemp("serial")
    out = tmp / "out"
    assert run_cli(_dedup_config(folder, out, tokenizer_dir, tmp), tmp / "config.json") == 0
    return out


def _all_keys(corpus) -> set[int]:
    return {(f << 40) | r for f, r in corpus.order}


def test_planted_near_duplicates_are_found_and_dissimilar_documents_kept(planted, serial_run):
    corpus, _ = planted
    kept = kept_keys(serial_run)
    removed = _all_keys(corpus) - kept
    later = {b for _, b, _ in corpus.dup_pairs}
    found = [b not in kept for _, b, _ in corpus.dup_pairs]
    recall = sum(found) / len(found)
    assert recall > 0.95, f"recall of planted duplicates {recall:.3f}"
    assert all(a in kept for a, _, _ in corpus.dup_pairs), "a first occurrence was removed"
    # Every removed document is the later copy of a planted pair with J >= 0.85:
    # no document whose similarity to every other is below 0.5 is removed.
    assert removed <= later, f"{len(removed - later)} documents removed without a similar earlier one"
    low = [k for a, b, _ in corpus.low_pairs for k in (a, b)]
    assert all(k in kept for k in low), "a document with similarity < 0.5 was removed"
    manifest = json.loads((serial_run / "manifest.json").read_text())
    exact = sum(1 for _, _, j in corpus.dup_pairs if j == 1.0)
    assert manifest["stages"]["exact_dedup"]["removed"] == exact
    assert manifest["stages"]["near_dedup"]["removed"] == len(removed) - exact


def test_parallelism_4_gives_the_same_result_including_cross_slice_duplicates(planted, serial_run, tokenizer_dir, tmp_path):
    from cpt_trainer.curate.mapper import slice_files
    from cpt_trainer.curate.storage import InputFile

    corpus, folder = planted
    out = tmp_path / "out"
    cfg = _dedup_config(folder, out, tokenizer_dir, tmp_path, parallelism=4)
    path = write_config(tmp_path / "config.json", cfg)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cpt_trainer.cli", "curate", "--config", str(path)],
            env={**os.environ, "JOB_COMPLETION_INDEX": str(k)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for k in (3, 2, 1, 0)
    ]
    for p in procs:
        output, _ = p.communicate(timeout=300)
        assert p.returncode == 0, output.decode()[-3000:]

    serial = json.loads((serial_run / "manifest.json").read_text())
    parallel = json.loads((out / "manifest.json").read_text())
    assert parallel["parallelism"] == 4
    assert kept_keys(out) == kept_keys(serial_run)
    for split in ("train", "eval"):
        assert [e["sha256"] for e in parallel["splits"][split]] == [e["sha256"] for e in serial["splits"][split]]
    assert parallel["stages"] == serial["stages"]

    # The slices really split planted pairs, and those cross-slice copies were removed.
    files = sorted(folder.iterdir())
    sizes = [f.stat().st_size for f in files]
    owner = {}
    for k in range(4):
        for f in slice_files([InputFile(str(p), s, i) for i, (p, s) in enumerate(zip(files, sizes))], 4, k):
            owner[f.index] = k
    assert sorted(set(owner.values())) == [0, 1, 2, 3]
    cross = [(a, b) for a, b, _ in corpus.dup_pairs if owner[a >> 40] != owner[b >> 40]]
    assert len(cross) > 500
    kept = kept_keys(out)
    assert sum(b not in kept for _, b in cross) / len(cross) > 0.95
    assert not (out / "_work").exists()
