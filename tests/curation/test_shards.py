"""Shards decode back to the kept documents' token ids; a run killed mid-write and rerun
gives the same manifest and checksums."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from curation_helpers import config, read_documents, run_cli, sha256_file, write_config

NO_REWRITE = {"normalize": {"enabled": False}, "pii": {"enabled": False}}


def test_shards_decode_to_exactly_the_kept_documents(tokenizer_dir, shipped_split, tmp_path):
    from tokenizers import Tokenizer

    docs = shipped_split["held_out"][:300]
    planted_copies = docs[:20]  # exact duplicates, later in the corpus
    too_short = ["tiny", "a b c"]
    (tmp_path / "in").mkdir()
    a = docs[:150] + too_short
    b = docs[150:] + planted_copies
    (tmp_path / "in" / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in a))
    (tmp_path / "in" / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in b))
    cfg = config([str(tmp_path / "in")], str(tmp_path / "out"), str(tokenizer_dir), tmp_path,
                 stages=dict(NO_REWRITE, near_dedup={"enabled": False}), shard_tokens=4096, eval_fraction=0.1)  # fmt: skip
    assert run_cli(cfg, tmp_path / "config.json") == 0
    manifest, split_docs = read_documents(tmp_path / "out")

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    texts = {(0 << 40) | i: t for i, t in enumerate(a)} | {(1 << 40) | i: t for i, t in enumerate(b)}
    seen: set[str] = set()
    expected = {}
    n_exact = 0  # the planted copies and the shipped text's own repeats
    for k in sorted(texts):
        t = texts[k]
        ids = tok.encode(t, add_special_tokens=False).ids
        if len(ids) < 16:
            continue
        if t in seen:
            n_exact += 1
            continue
        seen.add(t)
        expected[k] = ids
    got = split_docs["train"] | split_docs["eval"]
    assert set(got) == set(expected)
    assert not set(split_docs["train"]) & set(split_docs["eval"])
    for k, ids in expected.items():
        assert got[k].tolist() == ids, k
    assert len(manifest["splits"]["train"]) > 1 and manifest["splits"]["eval"]
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == tok.get_vocab_size()
    assert manifest["eos_id"] == tok.token_to_id("</s>")
    assert manifest["tokenizer"]["sha256"] == sha256_file(tokenizer_dir / "tokenizer.json")
    assert n_exact >= len(planted_copies)
    assert manifest["stages"]["exact_dedup"]["removed"] == n_exact
    assert manifest["stages"]["length_filter"]["removed"] == len(too_short)
    ta = manifest["tokenizer_analysis"]
    assert ta["chars_per_token"] > 1 and ta["fertility"] > 1 and isinstance(ta["proposed_extension"], list)
    status = json.loads((tmp_path / "out" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["documents"] == len(expected)
    assert status["tokens"] == manifest["tokens"]["train"]
    assert len((tmp_path / "termination-log").read_bytes()) < 4096
    assert json.loads((tmp_path / "termination-log").read_text()) == status


@pytest.mark.slow
def test_killed_mid_write_then_rerun_gives_the_same_manifest_and_checksums(tokenizer_dir, planted, tmp_path):
    _, folder = planted
    stages = dict(NO_REWRITE, near_dedup={"enabled": False})
    src = [str(folder / "part-00.jsonl"), str(folder / "part-01.jsonl")]
    # 1,024-token shards: some 600 of them, so the write phase lasts long enough to be hit.
    reference = tmp_path / "reference"
    cfg_ref = config(src, str(reference), str(tokenizer_dir), tmp_path, stages=stages, shard_tokens=1024)
    assert run_cli(cfg_ref, tmp_path / "ref.json") == 0
    ref_manifest = json.loads((reference / "manifest.json").read_text())
    assert len(ref_manifest["splits"]["train"]) > 300

    out = tmp_path / "out"
    cfg = config(src, str(out), str(tokenizer_dir), tmp_path, stages=stages, shard_tokens=1024)
    path = write_config(tmp_path / "config.json", cfg)
    proc = subprocess.Popen([sys.executable, "-m", "cpt_trainer.cli", "curate", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and len(list(out.glob("train-*.bin"))) >= 20:
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "manifest.json").exists(), "the run finished before it was killed"
    # Whatever shard looks complete is complete: it is byte-identical to the reference one.
    ref_sha = {e["file"]: e["sha256"] for e in ref_manifest["splits"]["train"] + ref_manifest["splits"]["eval"]}
    complete = list(out.glob("*-*.bin"))
    assert complete
    for shard in complete:
        assert sha256_file(shard) == ref_sha[shard.name], shard.name

    assert run_cli(cfg, tmp_path / "config.json") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == ref_manifest
    for e in manifest["splits"]["train"] + manifest["splits"]["eval"]:
        assert sha256_file(out / e["file"]) == e["sha256"]
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    # A third run finds the output complete and leaves it alone.
    before = (out / "manifest.json").stat().st_mtime_ns
    assert run_cli(cfg, tmp_path / "config.json") == 0
    assert (out / "manifest.json").stat().st_mtime_ns == before
