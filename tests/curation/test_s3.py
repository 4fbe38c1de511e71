"""S3 source and output through boto3 against moto's S3 server on 127.0.0.1."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from curation_helpers import config, run_cli


def test_s3_sources_zstd_jsonl_and_parquet_to_s3_output(s3_server, tokenizer_dir, shipped_split, tmp_path):
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="corpora")
    docs = shipped_split["held_out"][:120]
    jsonl = "".join(json.dumps({"text": d}) + "\n" for d in docs[:60]).encode()
    s3.put_object(Bucket="corpora", Key="legal/raw/a.jsonl.zst", Body=zstandard.ZstdCompressor().compress(jsonl))
    s3.put_object(Bucket="corpora", Key="legal/raw/_SUCCESS", Body=b"")
    s3.put_object(Bucket="corpora", Key="legal/rawother/ignored.jsonl", Body=jsonl)  # a sibling prefix
    buf = io.BytesIO()
    pq.write_table(pa.table({"text": docs[60:], "n": list(range(60))}), buf)
    s3.put_object(Bucket="corpora", Key="legal/parquet/b.parquet", Body=buf.getvalue())

    common = {"s3": {"endpoint_url": s3_server, "region": "us-east-1"}, "eval_fraction": 0.05,
              "stages": {"near_dedup": {"enabled": False}}}  # fmt: skip
    cfg_jsonl = config(["s3://corpora/legal/raw"], "s3://out-bucket/corpus-a", str(tokenizer_dir), tmp_path, **common)
    s3.create_bucket(Bucket="out-bucket")
    assert run_cli(cfg_jsonl, tmp_path / "a.json") == 0
    cfg_pq = config(["s3://corpora/legal/parquet/"], "s3://out-bucket/corpus-b", str(tokenizer_dir), tmp_path,
                    format="parquet", **common)  # fmt: skip
    assert run_cli(cfg_pq, tmp_path / "b.json") == 0

    for prefix, n in (("corpus-a", 60), ("corpus-b", 60)):
        manifest = json.loads(s3.get_object(Bucket="out-bucket", Key=f"{prefix}/manifest.json")["Body"].read())
        assert manifest["inputs"]["files"] == 1
        total_docs = 0
        for split, entries in manifest["splits"].items():
            for e in entries:
                body = s3.get_object(Bucket="out-bucket", Key=f"{prefix}/{e['file']}")["Body"].read()
                import hashlib

                assert hashlib.sha256(body).hexdigest() == e["sha256"]
                tokens = np.frombuffer(body, dtype="<u2")
                assert len(tokens) == e["tokens"] and (tokens == manifest["eos_id"]).sum() == e["documents"]
                total_docs += e["documents"]
        assert total_docs == n - manifest["stages"]["exact_dedup"]["removed"]
        status = json.loads(s3.get_object(Bucket="out-bucket", Key=f"{prefix}/status.json")["Body"].read())
        assert status["phase"] == "Succeeded" and status["output_uri"] == f"s3://out-bucket/{prefix}"
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="out-bucket", Prefix=prefix)["Contents"]]
        assert not [k for k in keys if "/_work/" in k]


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("bad", ["tok/../../escape.txt", "tok/../../../../../../escape.txt", "tok/{root}/abs.txt"])
def test_fetching_a_prefix_refuses_a_key_that_resolves_outside_the_local_folder(s3_server, tmp_path, bad):
    import boto3

    from cpt_trainer.contract.config import S3Settings
    from cpt_trainer.curate.errors import CurationInputError
    from cpt_trainer.curate.storage import fetch_to_local

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    staging = tmp_path / "disk" / "staging"
    staging.mkdir(parents=True)
    bad = bad.format(root=tmp_path / "disk")  # tok//<root>/abs.txt: the relative part starts with "/"
    s3.put_object(Bucket="models", Key="tok/tokenizer.json", Body=b"{}")
    s3.put_object(Bucket="models", Key=bad, Body=b"escaped")
    settings = S3Settings(endpoint_url=s3_server, region="us-east-1")
    try:
        with pytest.raises(CurationInputError) as refused:
            fetch_to_local("s3://models/tok", settings, str(staging))
        assert f"S3 key {bad!r} under s3://models/tok" in str(refused.value)
        assert "refused, nothing downloaded" in str(refused.value)
        assert _files(tmp_path) == []

        s3.delete_object(Bucket="models", Key=bad)
        local = Path(fetch_to_local("s3://models/tok", settings, str(staging)))
        assert local.parent == staging.resolve()
        assert _files(tmp_path) == [f"disk/staging/{local.name}/tokenizer.json"]
    finally:
        for key in ("tok/tokenizer.json", bad):
            s3.delete_object(Bucket="models", Key=key)
        s3.delete_bucket(Bucket="models")
