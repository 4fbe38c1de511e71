"""Bad input: unreadable files, missing text fields, invalid UTF-8, an empty corpus."""

from __future__ import annotations

import gzip
import json
import os

from curation_helpers import config, read_documents, run_cli


def _good(n: int, docs) -> str:
    return "".join(json.dumps({"text": d}) + "\n" for d in docs[:n])


def test_bad_records_and_files_are_skipped_counted_and_named(tokenizer_dir, shipped_split, tmp_path, capsys):
    docs = shipped_split["held_out"]
    src = tmp_path / "in"
    src.mkdir()
    (src / "a-good.jsonl").write_text(_good(20, docs))
    (src / "b-mixed.jsonl").write_bytes(
        _good(5, docs[20:]).encode()
        + b'{"text": "caf\xe9 au lait, not UTF-8 at all, and long enough to pass the length filter surely"}\n'
        + json.dumps({"body": docs[30]}).encode() + b"\n"
        + b"{not json\n"
        + json.dumps({"text": 42}).encode() + b"\n"
        + _good(3, docs[40:]).encode()
    )  # fmt: skip
    # Large enough (several MiB unpacked) that records come out before the cut is hit.
    good_gz = gzip.compress("".join(json.dumps({"text": docs[50 + i % 100]}) + "\n" for i in range(6000)).encode())
    (src / "c-truncated.jsonl.gz").write_bytes(good_gz[: len(good_gz) // 2])
    os.symlink(tmp_path / "does-not-exist.jsonl", src / "d-dangling.jsonl")
    cfg = config([str(src)], str(tmp_path / "out"), str(tokenizer_dir), tmp_path,
                 stages={"near_dedup": {"enabled": False}, "exact_dedup": {"enabled": False}}, eval_fraction=0.0)  # fmt: skip
    assert run_cli(cfg, tmp_path / "config.json") == 0
    manifest, split_docs = read_documents(tmp_path / "out")
    reasons = manifest["skipped_by_reason"]
    assert reasons["invalid_utf8"] == 1
    assert reasons["missing_text_field"] == 1
    assert reasons["invalid_json"] == 1
    assert reasons["text_not_a_string"] == 1
    assert reasons["unreadable_file"] == 1
    assert reasons["read_error"] == 1
    by_uri = {(s["uri"].rsplit("/", 1)[-1], s["reason"]) for s in manifest["skipped"]}
    assert ("d-dangling.jsonl", "unreadable_file") in by_uri
    assert ("c-truncated.jsonl.gz", "read_error") in by_uri
    assert ("b-mixed.jsonl", "invalid_utf8") in by_uri
    mixed = [s for s in manifest["skipped"] if s["uri"].endswith("b-mixed.jsonl")]
    assert sorted(s["record"] for s in mixed) == [5, 6, 7, 8]
    # Everything readable is there: 20 + 5 + 3 documents and the part of the gzip before the cut.
    n_gz = sum(1 for k in split_docs["train"] if k >> 40 == 2)
    assert 0 < n_gz < 6000
    assert len(split_docs["train"]) == 28 + n_gz
    assert manifest["stages"]["read"]["removed"] == 4
    assert manifest["skipped_total"] == 6


def test_empty_corpus_is_a_clear_error(tokenizer_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    cfg = config([str(tmp_path / "empty")], str(tmp_path / "out"), str(tokenizer_dir), tmp_path)
    assert run_cli(cfg, tmp_path / "config.json") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("cpt-trainer curate: empty corpus: no input files")
    status = json.loads((tmp_path / "termination-log").read_text())
    assert status["phase"] == "Failed" and "empty corpus" in status["error"]


def test_corpus_without_the_text_field_is_a_clear_error(tokenizer_dir, shipped_split, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"content": d}) + "\n" for d in shipped_split["held_out"][:10]))
    cfg = config([str(src)], str(tmp_path / "out"), str(tokenizer_dir), tmp_path)
    assert run_cli(cfg, tmp_path / "config.json") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no documents" in err and "missing_text_field: 10" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_files_of_only_empty_documents_are_a_clear_error(tokenizer_dir, tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "   \n\t "}) + "\n" + json.dumps({"text": ""}) + "\n")
    cfg = config([str(src)], str(tmp_path / "out"), str(tokenizer_dir), tmp_path)
    assert run_cli(cfg, tmp_path / "config.json") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no documents left after curation" in err and "normalize removed 2" in err


def test_invalid_config_is_a_clear_error(tokenizer_dir, tmp_path, capsys):
    cfg = config(["/nowhere"], str(tmp_path / "out"), str(tokenizer_dir), tmp_path,
                 stages={"quality_filter": {"enabled": True}})  # fmt: skip
    assert run_cli(cfg, tmp_path / "config.json") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "stages.quality_filter" in err and "model_uri" in err
