"""`checkpoint.resume_step` (the operator's Rollback): later checkpoints of the abandoned branch
are deleted before training, the run resumes from exactly that step and matches an uninterrupted
run; a restart with the same config keeps the new branch; S3 deletion stays inside the prefix."""

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from cpt_trainer import cli
from cpt_trainer.contract.config import CheckpointConfig, S3Settings, TrainerConfig, load_config
from cpt_trainer.train.checkpointing import CheckpointManager
from cpt_trainer.train.distributed import DistEnv
from cpt_trainer.train.main import prepare

TOTAL, INTERVAL = 12, 4

BUCKET = "cpt-rollback"  # the shared `bucket` fixture (conftest.py) creates it


def _name(step: int) -> str:
    return f"step-{step:08d}"


def _config(make_config, name, ck, **checkpoint):
    return make_config(
        name,
        batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": TOTAL},
        eval={"interval": INTERVAL, "max_batches": 1},
        checkpoint={"interval": INTERVAL, "uri": str(ck), **checkpoint},
    )


def _complete(ck) -> list[str]:
    return sorted(p.name for p in ck.glob("step-*") if (p / "COMPLETE").is_file())


def _train(path) -> None:
    run = prepare(load_config(path, TrainerConfig))
    try:
        assert run.trainer.train() == "completed"
    finally:
        run.close()


def test_rollback_deletes_the_later_branch_resumes_exactly_and_is_done_once(make_config, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="cpt_trainer")
    ck_a, ck_b = tmp_path / "ck-uninterrupted", tmp_path / "ck-rolled-back"
    _train(_config(make_config, "a.json", ck_a))
    _train(_config(make_config, "b.json", ck_b))
    assert _complete(ck_b) == [_name(4), _name(8), _name(12)]
    # The old branch: a sentinel in each later checkpoint, a partial later one, a stale later marker.
    for step in (8, 12):
        (ck_b / _name(step) / "old-branch").write_text("x")
    (ck_b / _name(16) / "model").mkdir(parents=True)
    (ck_b / "rollback-00000008.json").write_text("{}")

    rollback = _config(make_config, "b-rollback.json", ck_b, resume_step=4)
    run = prepare(load_config(rollback, TrainerConfig))
    try:
        # Deleted before training starts; resumed at exactly step 4.
        assert sorted(p.name for p in ck_b.glob("step-*")) == [_name(4)]
        assert not (ck_b / "rollback-00000008.json").exists()
        assert json.loads((ck_b / "rollback-00000004-attempt-000.json").read_text()) == {
            "resume_step": 4, "checkpoint": _name(4), "removed": [_name(8), _name(12), _name(16)]}
        assert run.trainer.step == 4 and run.trainer.last_checkpoint == _name(4)
        assert run.trainer.train() == "completed"
    finally:
        run.close()
    assert any(f"rollback to {_name(4)}: removed the abandoned branch's checkpoints {_name(8)}, {_name(12)}, {_name(16)}"
               in r.getMessage() for r in caplog.records)
    assert _complete(ck_b) == [_name(4), _name(8), _name(12)]
    assert not any((ck_b / _name(step) / "old-branch").exists() for step in (8, 12))  # the new branch's
    a = load_file(str(ck_a / _name(TOTAL) / "model" / "model.safetensors"))
    b = load_file(str(ck_b / _name(TOTAL) / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-5), key
    for name in ("data_position.json", "scheduler.json"):
        assert (ck_a / _name(TOTAL) / name).read_text() == (ck_b / _name(TOTAL) / name).read_text()

    # A restart with the same config (resume_step 4): the new branch stays, the run is finished.
    for step in (8, 12):
        (ck_b / _name(step) / "new-branch").write_text("x")
    caplog.clear()
    run = prepare(load_config(rollback, TrainerConfig))
    try:
        assert run.trainer.step == TOTAL and run.trainer.last_checkpoint == _name(TOTAL)
        assert run.trainer.train() == "completed"
    finally:
        run.close()
    assert _complete(ck_b) == [_name(4), _name(8), _name(12)]
    assert all((ck_b / _name(step) / "new-branch").exists() for step in (8, 12))
    assert not any("removed the abandoned branch" in r.getMessage() for r in caplog.records)
    assert any("already done" in r.getMessage() for r in caplog.records)


def test_missing_resume_step_is_a_one_line_input_error(make_config, tmp_path, capsys):
    ck = tmp_path / "ck"
    for step in (3, 6):
        (ck / _name(step)).mkdir(parents=True)
        (ck / _name(step) / "COMPLETE").write_text(f"{step}\n")
    (ck / _name(9)).mkdir()  # incomplete: not listed
    path = make_config(checkpoint={"interval": 3, "uri": str(ck), "resume_step": 5})
    assert cli.main(["train", "--config", str(path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cpt-trainer train:")]
    assert len(err) == 1  # one line (the rest of stderr is transformers' loading progress)
    assert "checkpoint.resume_step 5: no complete checkpoint step-00000005" in err[0]
    assert "(complete steps: 3, 6)" in err[0]
    assert sorted(p.name for p in ck.iterdir()) == [_name(3), _name(6), _name(9)]  # nothing deleted or written


def test_resume_step_must_not_be_negative():
    with pytest.raises(ValueError):
        CheckpointConfig(uri="/x", resume_step=-1)



def _keys(client, bucket, prefix=""):
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def test_s3_rollback_deletes_only_inside_this_runs_prefix(bucket, moto_endpoint, tmp_path, monkeypatch):
    client, name = bucket
    own, other, sibling = "runs/run-1/checkpoints", "runs/run-2/checkpoints", "runs/run-1/checkpoints-old"
    for prefix in (own, other, sibling):
        for step in (4, 8, 12):
            for rel in ("COMPLETE", "model/model.safetensors", "trainer_state.json"):
                client.put_object(Bucket=name, Key=f"{prefix}/{_name(step)}/{rel}", Body=b"x")
        client.put_object(Bucket=name, Key=f"{prefix}/{_name(16)}/model/model.safetensors", Body=b"x")  # partial
        client.put_object(Bucket=name, Key=f"{prefix}/rollback-00000008.json", Body=b"{}")
    before_other, before_sibling = _keys(client, name, other + "/"), _keys(client, name, sibling + "/")

    cfg = CheckpointConfig(interval=INTERVAL, uri=f"s3://{name}/{own}", resume_step=4)
    s3 = S3Settings(endpoint_url=moto_endpoint, region="us-east-1")
    manager = CheckpointManager(cfg, s3, tmp_path / "cache", DistEnv(), total_steps=TOTAL)
    deleted_folders = []
    original = manager.store.delete_folder

    def delete_folder(uri):  # the COMPLETE marker is gone before the rest of the folder goes
        step_name = uri.rstrip("/").rsplit("/", 1)[-1]
        assert f"{own}/{step_name}/COMPLETE" not in _keys(client, name, f"{own}/{step_name}/")
        deleted_folders.append(uri)
        original(uri)

    monkeypatch.setattr(manager.store, "delete_folder", delete_folder)
    assert manager.resume_target() == _name(4)
    assert deleted_folders == [f"s3://{name}/{own}/{_name(s)}" for s in (8, 12, 16)]
    kept = [f"{own}/{_name(4)}/{rel}" for rel in ("COMPLETE", "model/model.safetensors", "trainer_state.json")]
    assert _keys(client, name, own + "/") == sorted(kept + [f"{own}/rollback-00000004-attempt-000.json"])
    assert json.loads(client.get_object(Bucket=name, Key=f"{own}/rollback-00000004-attempt-000.json")["Body"].read()) == {
        "resume_step": 4, "checkpoint": _name(4), "removed": [_name(8), _name(12), _name(16)]}
    assert _keys(client, name, other + "/") == before_other
    assert _keys(client, name, sibling + "/") == before_sibling

    # The new branch saves step 8; a restart with the same config resumes from it, deleting nothing.
    for rel in ("model/model.safetensors", "COMPLETE"):
        client.put_object(Bucket=name, Key=f"{own}/{_name(8)}/{rel}", Body=b"y")
    again = CheckpointManager(cfg, s3, tmp_path / "cache", DistEnv(), total_steps=TOTAL)
    assert again.resume_target() == _name(8)
    assert f"{own}/{_name(8)}/COMPLETE" in _keys(client, name, own + "/")


def test_a_second_rollback_to_the_same_step_is_done_again(make_config, tmp_path):
    """Attempt 2 returns to the step attempt 1 returned to: a new marker, so the branch of attempt 1 goes."""
    from cpt_trainer.contract.config import TrainerConfig, load_config
    from cpt_trainer.train.main import prepare

    ck = tmp_path / "ck"
    base = dict(batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 12},
                checkpoint={"interval": 4, "uri": str(ck)}, eval={"interval": 4, "max_batches": 1})  # fmt: skip

    def train(name, **extra):
        run = prepare(load_config(make_config(name, **{**base, **extra}), TrainerConfig))
        try:
            run.trainer.train(lambda: False)
        finally:
            run.close()

    train("first.json")
    first = {p.name for p in ck.glob("step-*")}
    train("attempt1.json", checkpoint={**base["checkpoint"], "resume_step": 4}, attempt=1)
    assert (ck / "rollback-00000004-attempt-001.json").is_file()
    stamp = (ck / "step-00000008" / "trainer_state.json").stat().st_mtime_ns
    train("attempt2.json", checkpoint={**base["checkpoint"], "resume_step": 4}, attempt=2)
    assert (ck / "rollback-00000004-attempt-002.json").is_file()
    assert (ck / "step-00000008" / "trainer_state.json").stat().st_mtime_ns != stamp  # written again by attempt 2
    assert {p.name for p in ck.glob("step-*")} == first
