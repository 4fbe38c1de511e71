"""Model and corpora staged from S3, checkpoints uploaded to S3 and resumed from it (moto server)."""

import boto3
import pytest

from cpt_trainer import cli
from cpt_trainer.contract.config import TrainerConfig, load_config
from cpt_trainer.train.main import prepare


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
