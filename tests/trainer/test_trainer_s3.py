"""Model and corpora staged from S3, checkpoints uploaded to S3 and resumed from it (moto server);
keys and names that would lead outside the local folder are refused."""

import boto3
import pytest

from cpt_trainer import cli
from cpt_trainer.contract.config import CheckpointConfig, S3Settings, TrainerConfig, load_config
from cpt_trainer.train.checkpointing import CheckpointManager
from cpt_trainer.train.distributed import DistEnv
from cpt_trainer.train.errors import TrainerInputError
from cpt_trainer.train.main import prepare
from cpt_trainer.train.s3_staging import stage

BUCKET = "cpt-keys"  # the shared `bucket` fixture (conftest.py) creates it


@pytest.fixture
def s3(moto_endpoint, model_dir, corpora):
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = "cpt-test"
    client.create_bucket(Bucket=bucket)
    for prefix, folder in (("models/tiny", model_dir), ("corpora/legal", corpora["legal"]), ("corpora/general", corpora["general"])):
        for path in folder.rglob("*"):
            if path.is_file():
                client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
    yield client, bucket
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page.get("Contents", [])]
    for i in range(0, len(keys), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]]})
    client.delete_bucket(Bucket=bucket)


def _keys(client, bucket, prefix):
    return {o["Key"][len(prefix) :] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])}


def test_checkpoints_go_to_s3_and_resume_skips_an_incomplete_one(s3, make_config, moto_endpoint):
    client, bucket = s3
    base = f"s3://{bucket}"
    path = make_config(
        model={"uri": f"{base}/models/tiny"},
        data={"corpora": [
            {"name": "legal", "role": "domain", "weight": 1.0, "uri": f"{base}/corpora/legal"},
            {"name": "general", "role": "replay", "weight": 1.0, "uri": f"{base}/corpora/general"},
        ]},
        checkpoint={"interval": 3, "uri": f"{base}/runs/run-1/checkpoints"},
        s3={"endpoint_url": moto_endpoint, "region": "us-east-1"},
    )
    assert cli.main(["train", "--config", str(path)]) == 0
    prefix = "runs/run-1/checkpoints/"
    keys = _keys(client, bucket, prefix)
    for step in ("step-00000003", "step-00000006"):
        for name in ("COMPLETE", "metrics.json", "model/model.safetensors", "optimizer.pt", "data_position.json"):
            assert f"{step}/{name}" in keys

    # Make the newest one incomplete: resume must take step 3, then write step 6 whole again.
    client.delete_object(Bucket=bucket, Key=f"{prefix}step-00000006/COMPLETE")
    run = prepare(load_config(path, TrainerConfig))
    try:
        assert run.trainer.step == 3
        assert run.trainer.last_checkpoint == "step-00000003"
        assert run.trainer.baseline is not None  # restored, not re-measured on a trained model
        assert run.trainer.train() == "completed"
    finally:
        run.close()
    assert "step-00000006/COMPLETE" in _keys(client, bucket, prefix)


def test_missing_s3_model_is_a_clear_error(s3, make_config, moto_endpoint, capsys):
    _, bucket = s3
    path = make_config(model={"uri": f"s3://{bucket}/models/absent"}, s3={"endpoint_url": moto_endpoint, "region": "us-east-1"})
    assert cli.main(["train", "--config", str(path)]) == 2
    assert "model path not found" in capsys.readouterr().err



def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("bad", ["prefix/../../escape.txt", "prefix/../../../../../../escape.txt", "prefix/{root}/abs.txt"])
def test_staging_refuses_a_key_that_resolves_outside_its_folder_and_writes_nothing(bucket, moto_endpoint, tmp_path, bad):
    client, name = bucket
    root = tmp_path / "disk"
    bad = bad.format(root=root)  # prefix//<root>/abs.txt: the relative part starts with "/"
    client.put_object(Bucket=name, Key="prefix/config.json", Body=b"{}")
    client.put_object(Bucket=name, Key=bad, Body=b"escaped")
    settings = S3Settings(endpoint_url=moto_endpoint, region="us-east-1")
    with pytest.raises(TrainerInputError) as refused:
        stage(f"s3://{name}/prefix", root / "cache", settings, "model path")
    assert f"S3 key {bad!r} under s3://{name}/prefix" in str(refused.value)
    assert "refused, nothing staged" in str(refused.value)
    assert _files(tmp_path) == []  # not the escape, not even the good key

    client.delete_object(Bucket=name, Key=bad)
    local = stage(f"s3://{name}/prefix", root / "cache", settings, "model path")
    assert local == (root / "cache" / name / "prefix").resolve()
    assert _files(tmp_path) == [f"disk/cache/{name}/prefix/config.json"]


def test_a_key_with_dots_that_stays_inside_still_stages(bucket, moto_endpoint, tmp_path):
    client, name = bucket
    client.put_object(Bucket=name, Key="prefix/a/../b.txt", Body=b"inside")
    local = stage(f"s3://{name}/prefix", tmp_path / "cache", S3Settings(endpoint_url=moto_endpoint), "model path")
    assert (local / "b.txt").read_bytes() == b"inside"


def test_an_s3_uri_whose_prefix_leaves_the_cache_is_refused_before_listing(tmp_path):
    with pytest.raises(TrainerInputError, match="would be staged outside"):
        stage("s3://bucket/../../../escape", tmp_path / "cache", S3Settings(endpoint_url="http://127.0.0.1:9"), "corpus c")
    assert _files(tmp_path) == []


def test_a_checkpoint_with_an_escaping_key_is_not_fetched(bucket, moto_endpoint, tmp_path):
    client, name = bucket
    client.put_object(Bucket=name, Key="ck/step-00000003/COMPLETE", Body=b"3\n")
    client.put_object(Bucket=name, Key="ck/step-00000003/rng/../../../../escape.pt", Body=b"x")
    manager = CheckpointManager(CheckpointConfig(uri=f"s3://{name}/ck"), S3Settings(endpoint_url=moto_endpoint),
                                tmp_path / "cache", DistEnv(), total_steps=6)
    assert manager.latest() == "step-00000003"
    with pytest.raises(TrainerInputError, match="rng/../../../../escape.pt"):
        manager.fetch("step-00000003")
    assert _files(tmp_path) == []


def test_a_corpus_name_that_leaves_the_cache_is_refused(make_config, capsys, corpora, tmp_path):
    path = make_config(data={"corpora": [
        {"name": "../../../escape", "role": "domain", "weight": 1.0, "uri": str(corpora["legal"])},
        {"name": "general", "role": "replay", "weight": 1.0, "uri": str(corpora["general"])},
    ]})
    assert cli.main(["train", "--config", str(path)]) == 2
    assert "corpus name '../../../escape' would be a local path outside" in capsys.readouterr().err
