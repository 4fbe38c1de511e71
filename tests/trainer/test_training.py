"""The trainer end to end on CPU (in process): learning, evaluation, checkpoints, metrics, failures."""

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cpt_trainer import cli
from cpt_trainer.contract import metrics as m
from cpt_trainer.contract.config import TrainerConfig, load_config
from cpt_trainer.train.checkpointing import retain_deletions
from cpt_trainer.train.main import prepare
from cpt_trainer.train.shards import write_corpus


def _run(path):
    run = prepare(load_config(path, TrainerConfig))
    return run


def test_loss_decreases_on_a_learnable_corpus(make_config, tmp_path):
    path = make_config(
        optim={"learning_rate": 1e-2, "min_learning_rate": 1e-3, "warmup_fraction": 0.05, "schedule": "cosine"},
        batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 40},
        eval={"interval": 40, "max_batches": 2},
        checkpoint={"interval": 40, "uri": str(tmp_path / "ck")},
    )
    run = _run(path)
    try:
        run.trainer.evaluate()
        losses = [run.trainer.train_step().loss for _ in range(40)]
        after = run.trainer.evaluate()
    finally:
        run.close()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.0, (first, last)
    assert after.domain_perplexity < run.trainer.baseline.domain_perplexity * 0.5
    assert after.general["general"] < run.trainer.baseline.general["general"]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(samples, name, **labels):
    key = (name, tuple(sorted({"namespace": "tenant-a", "run": "run-1", **labels}.items())))
    return samples[key]


def test_metrics_endpoint_serves_every_documented_name_and_values_change(make_config, corpora, cloze_task):
    general = [{"name": "general", "uri": str(corpora["general"])},
               {"name": "cloze", "kind": "lm_eval", "uri": str(cloze_task), "limit": 20}]  # fmt: skip
    run = _run(make_config(batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 6},
                           eval={"interval": 3, "max_batches": 2, "general": general}))  # fmt: skip
    trainer = run.trainer
    try:
        port = run.metrics.port
        trainer.evaluate()
        trainer.train_step()
        trainer.save_checkpoint()
        first = _scrape(port)
        served = {name for name, _ in first}
        for spec in m.TRAINER_METRICS:
            assert spec.name in served, spec.name
            labelled = [labels for name, labels in first if name == spec.name]
            assert all(dict(lb)["namespace"] == "tenant-a" and dict(lb)["run"] == "run-1" for lb in labelled)
        assert _value(first, "cpt_step") == 1
        assert _value(first, "cpt_total_steps") == 6
        assert _value(first, "cpt_tokens_seen_total") == 8 * 64
        assert _value(first, "cpt_last_checkpoint_step") == 1
        assert _value(first, "cpt_general_score", eval="general") == _value(first, "cpt_baseline_general_score", eval="general")
        # The direction of each eval, and the baseline's stderr (the stderr rule reproducible from metrics).
        assert _value(first, "cpt_general_score_higher_is_better", eval="cloze") == 1
        assert _value(first, "cpt_general_score_higher_is_better", eval="general") == 0
        base_se = _value(first, "cpt_baseline_general_score_stderr", eval="cloze")
        assert base_se > 0 and base_se == _value(first, "cpt_general_score_stderr", eval="cloze")
        assert ("cpt_baseline_general_score_stderr", (("eval", "general"), ("namespace", "tenant-a"), ("run", "run-1"))) not in first
        saved = trainer.checkpoint_metrics()
        assert saved["baseline_general_stderr"] == {"cloze": base_se} and saved["general_higher_is_better"]["cloze"] is True
        for _ in range(2):
            trainer.train_step()
        trainer.evaluate()
        trainer.save_checkpoint()
        second = _scrape(port)
    finally:
        run.close()
    assert _value(second, "cpt_step") == 3
    assert _value(second, "cpt_tokens_seen_total") == 3 * 8 * 64
    assert _value(second, "cpt_eval_step") == 3
    assert _value(second, "cpt_last_checkpoint_step") == 3
    for name in ("cpt_train_loss", "cpt_learning_rate", "cpt_domain_perplexity", "cpt_general_regression_ratio"):
        assert _value(second, name) != _value(first, name), name
    assert _value(second, "cpt_general_score", eval="general") != _value(first, "cpt_general_score", eval="general")
    assert _value(second, "cpt_tokens_per_second") > 0
    assert 0 <= _value(second, "cpt_general_score", eval="cloze") <= 1
    assert _value(second, "cpt_general_score_stderr", eval="cloze") > 0
    assert _value(second, "cpt_mfu_ratio") == 0  # CPU: no known peak


def test_volume_checkpoints_are_listed_in_metrics_until_the_retain_list_deletes_them(make_config, tmp_path):
    retain = tmp_path / "retain.json"
    ck = tmp_path / "ck"
    path = make_config(batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 6},
                       checkpoint={"interval": 2, "uri": str(ck), "retain_file": str(retain)})  # fmt: skip
    run = _run(path)
    trainer = run.trainer
    try:
        port = run.metrics.port
        trainer.evaluate()
        for _ in range(2):
            trainer.train_step()
        trainer.evaluate()
        trainer.save_checkpoint()
        for _ in range(2):
            trainer.train_step()
        trainer.evaluate()
        trainer.save_checkpoint()
        listed = _scrape(port)
        saved = json.loads((ck / "step-00000002" / m.CHECKPOINT_METRICS_FILE).read_text())
        retain.write_text(json.dumps({"keep": ["step-00000004"], "decidedThroughStep": 4}))
        trainer.evaluate()
        trainer.apply_retain_list()
        after = _scrape(port)
    finally:
        run.close()
    assert _value(listed, "cpt_checkpoint_present", step="2") == 1
    assert _value(listed, "cpt_checkpoint_present", step="4") == 1
    assert _value(listed, "cpt_checkpoint_domain_perplexity", step="2") == pytest.approx(saved["domain_perplexity"])
    assert _value(listed, "cpt_checkpoint_general_regression_ratio", step="2") == pytest.approx(saved["general_regression"])
    assert _value(listed, "cpt_checkpoint_general_score", step="2", eval="general") == pytest.approx(saved["general_scores"]["general"])
    assert _value(listed, "cpt_baseline_domain_perplexity") == pytest.approx(saved["baseline_domain_perplexity"])
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000004"]
    assert ("cpt_checkpoint_present", (("namespace", "tenant-a"), ("run", "run-1"), ("step", "2"))) not in after
    assert _value(after, "cpt_checkpoint_present", step="4") == 1


def test_a_restarted_trainer_lists_the_checkpoints_already_on_its_volume(make_config, tmp_path):
    ck = tmp_path / "ck"
    path = make_config(batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 4}, checkpoint={"interval": 2, "uri": str(ck)})
    assert cli.main(["train", "--config", str(path)]) == 0
    run = _run(path)
    try:
        run.trainer.list_volume_checkpoints()
        listed = _scrape(run.metrics.port)
    finally:
        run.close()
    assert {dict(lb)["step"] for name, lb in listed if name == "cpt_checkpoint_present"} == {"2", "4"}


def test_a_full_run_writes_complete_checkpoints_with_their_metrics(make_config, tmp_path):
    path = make_config()
    assert cli.main(["train", "--config", str(path)]) == 0
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003", "step-00000006"]
    ck = root / "step-00000006"
    for name in ("COMPLETE", "metrics.json", "optimizer.pt", "scheduler.json", "data_position.json",
                 "trainer_state.json", "rng/rank-00000.pt", "model/config.json", "model/model.safetensors",
                 "model/tokenizer.json"):
        assert (ck / name).is_file(), name
    metrics = json.loads((ck / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["eval_step"] == 6
    assert metrics["tokens_seen"] == 6 * 8 * 64
    assert set(metrics["general_scores"]) == {"general"}
    assert metrics["general_regression"] == pytest.approx(
        (metrics["general_scores"]["general"] - metrics["baseline_general_scores"]["general"])
        / metrics["baseline_general_scores"]["general"]
    )
    assert json.loads((ck / "scheduler.json").read_text())["updates_done"] == 6
    assert json.loads((ck / "data_position.json").read_text())["sequences"] == 6 * 8


def test_retain_list_deletes_unlisted_checkpoints_but_never_the_newest(make_config, tmp_path):
    retain = tmp_path / "retain.json"
    retain.write_text(json.dumps({"keep": ["step-00000002"], "decidedThroughStep": 6}))
    path = make_config(checkpoint={"interval": 2, "uri": str(tmp_path / "ck"), "retain_file": str(retain)})
    assert cli.main(["train", "--config", str(path)]) == 0
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-00000002", "step-00000006"]


def test_retain_list_never_deletes_a_checkpoint_newer_than_the_decision(make_config, tmp_path):
    # The operator decided when step 2 was the newest; 4 and 6 were saved after (the ConfigMap lags).
    retain = tmp_path / "retain.json"
    retain.write_text(json.dumps({"keep": [], "decidedThroughStep": 2}))
    path = make_config(checkpoint={"interval": 2, "uri": str(tmp_path / "ck"), "retain_file": str(retain)})
    assert cli.main(["train", "--config", str(path)]) == 0
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["step-00000004", "step-00000006"]


def test_retain_deletions_rules():
    folders = ["step-00000002", "step-00000004", "step-00000006", "step-00000008", "other"]
    complete = ["step-00000002", "step-00000004", "step-00000006"]  # step 8 is a crash leftover
    assert retain_deletions(folders, complete, {"step-00000004"}, 8) == ["step-00000002", "step-00000008"]
    assert retain_deletions(folders, complete, set(), 10) == ["step-00000002", "step-00000004", "step-00000008"]
    # Without decidedThroughStep only what is older than the newest kept one goes.
    assert retain_deletions(folders, complete, {"step-00000004"}, None) == ["step-00000002"]
    assert retain_deletions(folders, complete, set(), None) == []
    # With the operator's `delete` list, a complete checkpoint goes only when named there (one it
    # never saw listed stays); the unfinished save at or before the decision still goes.
    assert retain_deletions(folders, complete, set(), 10, named={"step-00000004"}) == ["step-00000004", "step-00000008"]
    assert retain_deletions(folders, complete, set(), 10, named=set()) == ["step-00000008"]


# ---------------------------------------------------------------- clear failures (exit 2, one line)


def _fails(path, capsys, *needles):
    assert cli.main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_config_names_the_field(make_config, capsys):
    _fails(make_config(batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 0}), capsys,
           "batch.total_steps", "greater than or equal to 1")


def test_missing_model_path_is_clear(make_config, capsys, tmp_path):
    _fails(make_config(model={"uri": str(tmp_path / "nope")}), capsys, "model path not found", "nope")


def test_shards_of_another_vocabulary_are_refused(make_config, capsys, tmp_path):
    other = write_corpus(tmp_path / "other", {"train": [[5] * 500], "eval": [[6] * 100]}, vocab_size=1000, eos_id=2)
    corpora = [{"name": "other", "role": "domain", "weight": 1.0, "uri": str(other)}]
    _fails(make_config(data={"corpora": corpora, "alpha": 1.0}), capsys, "corpus other", "vocab_size 1000", "512")


def test_replay_needed_when_alpha_below_one(make_config, capsys, corpora):
    only_domain = [{"name": "legal", "role": "domain", "weight": 1.0, "uri": str(corpora["legal"])}]
    _fails(make_config(data={"corpora": only_domain, "alpha": 0.7}), capsys, "no corpus has role replay")


def test_a_stop_request_ends_after_the_step_with_a_checkpoint(make_config, tmp_path):
    run = _run(make_config())
    try:
        assert run.trainer.train(stop_requested=lambda: True) == "stopped"
    finally:
        run.close()
    assert run.trainer.step == 1
    assert (tmp_path / "checkpoints" / "step-00000001" / "COMPLETE").is_file()


def test_a_sequence_longer_than_the_models_positions_is_refused(make_config, capsys):
    # The test model has max_position_embeddings 256 (conftest).
    _fails(make_config(data={"sequence_length": 257}), capsys, "data.sequence_length 257", "max_position_embeddings 256")


def _stopped_at_step_one(make_config, tmp_path):
    """A run stopped after its first step: (its trainer_state.json, that file's content)."""
    run = _run(make_config())
    try:
        assert run.trainer.train(stop_requested=lambda: True) == "stopped"
    finally:
        run.close()
    state_file = tmp_path / "checkpoints" / "step-00000001" / "trainer_state.json"
    return state_file, json.loads(state_file.read_text())


def test_resuming_a_checkpoint_of_the_other_engine_names_both_and_the_way_out(make_config, capsys, tmp_path):
    state_file, state = _stopped_at_step_one(make_config, tmp_path)
    assert state["engine"] == "torch"
    state_file.write_text(json.dumps({**state, "engine": "deepspeed"}))
    _fails(make_config(), capsys, "written by engine deepspeed", "this run uses engine torch", "set engine.kind deepspeed")


def _stub_trainer(kind: str, zero_stage: int | None, world_size: int):
    from types import SimpleNamespace

    engine = SimpleNamespace(kind=kind, **({} if zero_stage is None else {"zero_stage": zero_stage}))
    return SimpleNamespace(engine=engine, dist=SimpleNamespace(world_size=world_size))


def test_a_deepspeed_resume_on_another_zero_stage_or_world_size_is_refused_in_one_line(tmp_path):
    from pathlib import Path

    from cpt_trainer.train.trainer import Trainer

    folder = Path("/ck/step-00000010")
    written = {"engine": "deepspeed", "zero_stage": 2, "world_size": 4}
    for stage, ranks in ((3, 4), (2, 2), (3, 8)):
        with pytest.raises(ValueError) as refused:
            Trainer.check_resumable(_stub_trainer("deepspeed", stage, ranks), written, folder)
        line = str(refused.value)
        assert "\n" not in line
        for needle in ("written by DeepSpeed ZeRO stage 2, world size 4", f"this run is ZeRO stage {stage}, world size {ranks}",
                       "resume it with engine.zero_stage 2 and world size 4", "model.uri /ck/step-00000010/model"):
            assert needle in line, line
    Trainer.check_resumable(_stub_trainer("deepspeed", 2, 4), written, folder)  # the same: resumes
    old = {"engine": "deepspeed", "world_size": 4}  # written before zero_stage was saved: world size only
    Trainer.check_resumable(_stub_trainer("deepspeed", 3, 4), old, folder)
    with pytest.raises(ValueError, match="world size 4, this run is ZeRO stage 3, world size 2"):
        Trainer.check_resumable(_stub_trainer("deepspeed", 3, 2), old, folder)


def test_the_torch_engine_resumes_on_another_world_size(make_config, capsys, tmp_path):
    # rank 0 saves the whole model and optimizer state and the data position is global: any
    # world size can resume it (DeepSpeed's ZeRO partitions cannot: see the test above)
    state_file, state = _stopped_at_step_one(make_config, tmp_path)
    assert state["engine"] == "torch" and state["zero_stage"] is None and state["world_size"] == 1
    state_file.write_text(json.dumps({**state, "world_size": 4}))
    assert cli.main(["train", "--config", str(make_config())]) == 0
    assert (tmp_path / "checkpoints" / "step-00000006" / "COMPLETE").is_file()


def test_a_stop_on_an_evaluation_step_saves_at_once_and_the_resumed_run_evaluates_that_step(make_config, tmp_path):
    # Every step is due for an evaluation: a stop (SIGTERM) skips it so the save gets the grace
    # period; the resumed run evaluates that step first, where an uninterrupted run did.
    config = make_config(eval={"interval": 1, "max_batches": 1})
    ck = tmp_path / "checkpoints"

    def spied(run):
        evaluated, real = [], run.trainer.evaluate

        def evaluate():
            evaluated.append(run.trainer.step)
            return real()

        run.trainer.evaluate = evaluate
        return evaluated

    run = _run(config)
    evaluated = spied(run)
    try:
        assert run.trainer.train(stop_requested=lambda: True) == "stopped"
    finally:
        run.close()
    assert evaluated == [0]  # the baseline only: step 1's evaluation was skipped
    assert (ck / "step-00000001" / "COMPLETE").is_file()
    assert json.loads((ck / "step-00000001" / "metrics.json").read_text())["eval_step"] == 0

    run = _run(config)  # resumes from step 1
    evaluated = spied(run)
    try:
        assert run.trainer.train(stop_requested=lambda: True) == "stopped"
    finally:
        run.close()
    assert evaluated == [1]  # step 1's, after the resume; step 2's skipped by the second stop
    assert json.loads((ck / "step-00000002" / "metrics.json").read_text())["eval_step"] == 1

    run = _run(config)
    evaluated = spied(run)
    try:
        assert run.trainer.train() == "completed"
    finally:
        run.close()
    assert evaluated == [2, 3, 4, 5, 6]
    assert json.loads((ck / "step-00000006" / "metrics.json").read_text())["eval_step"] == 6


def test_a_stop_at_the_last_step_completes_with_the_final_evaluation(make_config, tmp_path):
    config = make_config(batch={"micro_batch_size": 4, "global_batch_size": 8, "total_steps": 1})
    run = _run(config)
    try:
        assert run.trainer.train(stop_requested=lambda: True) == "completed"
    finally:
        run.close()
    metrics = json.loads((tmp_path / "checkpoints" / "step-00000001" / "metrics.json").read_text())
    assert metrics["eval_step"] == 1


def test_the_trainer_runs_with_every_hub_offline():
    # Set by cpt_trainer.cli at import (this module imported it), before transformers, datasets
    # or lm_eval read them: a run never downloads, a missing local file fails at once.
    import os
    import subprocess
    import sys

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    assert all(os.environ[n] == "1" for n in names)
    env = {k: v for k, v in os.environ.items() if k not in names}
    # transformers 5 takes its offline mode from huggingface_hub's (read at import)
    probe = ("import os, sys; from cpt_trainer import cli; import transformers, lm_eval; "
             "import huggingface_hub.constants as hub, datasets.config as ds; "
             "print(hub.HF_HUB_OFFLINE, ds.HF_DATASETS_OFFLINE, hub.is_offline_mode(), *(os.environ[n] for n in sys.argv[1:]))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe, *names], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True", "True", "1", "1", "1"], done.stdout
