"""`cpt plan` says which engine, ZeRO stage, precision and compile mode the trainer will run, and
why (the real CLI, in a subprocess), and `engine_choice` is the trainer's own rule: compared with
`cpt_trainer.train.engines.choose_engine_kind` on the config the operator renders, and with the
stage the memory estimate uses (`plan_report.effective_zero_stage`)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from api_helpers import cpt, write_legal

from cpt_operator.api.resources import load_manifests
from cpt_operator.decide.engine_choice import GPU_FRACTION, TRAINING_STATE_BYTES_PER_PARAMETER, engine_choice
from cpt_operator.plan_report import effective_zero_stage
from cpt_operator.render.trainer_config import render_trainer_config

REPO = Path(__file__).resolve().parents[2]
LEGAL = REPO / "examples" / "legal-cpt"
GIB = 2**30


def plan_of(folder: Path) -> tuple[dict, str]:
    """(the JSON plan, the text plan's engine line) of the one CPTRun in `folder`."""
    result = cpt("plan", str(folder), "--output", "json")
    assert result.returncode in (0, 1), result.stderr  # 1: does not fit (still a plan)
    (plan,) = json.loads(result.stdout)
    text = cpt("plan", str(folder), "--no-objects").stdout
    (line,) = [x for x in text.splitlines() if x.startswith("  engine ")]
    return plan, line.split(None, 1)[1]


def test_auto_small_model_is_plain_pytorch(tmp_path):
    folder = write_legal(tmp_path, {"baseModel": {"parameters": 125_000_000}})
    plan, line = plan_of(folder)
    assert plan["engine"]["kind"] == "torch"
    assert plan["engine"]["zero_stage"] == 0
    assert plan["engine"]["precision"] == "bf16" and plan["engine"]["compile"] is True
    assert plan["engine"]["reason"].startswith("auto: 125.0M parameters need 1.9 GiB of training state, at most half")
    assert line.startswith("torch, bf16, compile on (auto: ")
    assert "plain PyTorch" in cpt("plan", str(folder), "--no-objects").stdout  # the memory line says the same engine


def test_auto_8b_on_80gb_is_deepspeed_at_the_specs_stage(tmp_path):
    folder = write_legal(tmp_path, {"baseModel": {"parameters": 8_000_000_000}, "deepspeed": {"zeroStage": 3}})
    plan, line = plan_of(folder)
    assert plan["engine"] == {
        "kind": "deepspeed", "zero_stage": 3, "precision": "bf16", "compile": True,
        "reason": "auto: 8.0B parameters need 119.2 GiB of training state, more than half of one 80 GiB GPU",
    }  # fmt: skip
    assert line == ("deepspeed ZeRO-3, bf16, compile on (auto: 8.0B parameters need 119.2 GiB of training state, "
                    "more than half of one 80 GiB GPU)")  # fmt: skip
    two = write_legal(tmp_path, {"baseModel": {"parameters": 8_000_000_000}, "deepspeed": {"zeroStage": 2}}, "two")
    plan, _ = plan_of(two)
    assert (plan["engine"]["kind"], plan["engine"]["zero_stage"], plan["zero_stage"]) == ("deepspeed", 2, 2)


def test_always_is_deepspeed_even_for_a_small_model(tmp_path):
    folder = write_legal(tmp_path, {"baseModel": {"parameters": 125_000_000}, "deepspeed": {"mode": "always", "zeroStage": 1},
                                    "training": {"precision": "fp32", "compile": False}})  # fmt: skip
    plan, line = plan_of(folder)
    assert plan["engine"] == {"kind": "deepspeed", "zero_stage": 1, "precision": "fp32", "compile": False,
                              "reason": "deepspeed.mode always"}  # fmt: skip
    assert line == "deepspeed ZeRO-1, fp32, compile off (deepspeed.mode always)"


def test_never_is_plain_pytorch_even_for_8b(tmp_path):
    folder = write_legal(tmp_path, {"baseModel": {"parameters": 8_000_000_000}, "deepspeed": {"mode": "never"}})
    plan, line = plan_of(folder)
    assert (plan["engine"]["kind"], plan["engine"]["zero_stage"], plan["zero_stage"]) == ("torch", 0, 0)
    assert line == "torch, bf16, compile on (deepspeed.mode never)"


def test_auto_without_a_parameter_count_says_the_trainer_decides_at_start(tmp_path):
    folder = write_legal(tmp_path, {})
    run_file = folder / "03-cptrun.yaml"
    docs = list(yaml.safe_load_all(run_file.read_text()))
    for key in ("parameters", "hiddenSize", "numLayers"):  # an S3 model without hints: nothing to count here
        docs[0]["spec"]["baseModel"].pop(key)
    run_file.write_text(yaml.safe_dump_all(docs))
    plan, line = plan_of(folder)
    assert plan["engine"]["kind"] == "auto" and plan["engine"]["zero_stage"] is None
    reason = plan["engine"]["reason"]
    assert "decides at start" in reason and "parameter" in reason and "one GPU's memory" in reason
    assert "deepspeed ZeRO-3" in reason  # the legal example's stage, should DeepSpeed be chosen
    assert line.startswith("decided at start (torch or deepspeed), bf16, compile on (auto: the trainer decides at start")


def test_cpu_computes_bf16_in_fp32_and_says_so():
    (run,) = [r for r in load_manifests([LEGAL]) if r.kind == "CPTRun"]
    choice = engine_choice(run.spec, 8_000_000_000, 80.0, on_gpu=False)
    assert (choice.kind, choice.zero_stage, choice.precision) == ("torch", 0, "fp32")
    assert "bf16 applies on GPU only" in choice.reason and "fp32" in choice.reason


# ---- the same rule as the trainer's, and as the memory estimate's


def _legal_inputs():
    resources = load_manifests([LEGAL])
    (run,) = [r for r in resources if r.kind == "CPTRun"]
    corpora = {r.name: r.spec for r in resources if r.kind == "Corpus"}
    (policy,) = [r.spec for r in resources if r.kind == "CheckpointPolicy"]
    return run, corpora, policy


def _with(spec, mode: str, stage: int):
    data = spec.model_dump()
    data["deepspeed"] = {**data["deepspeed"], "mode": mode, "zero_stage": stage, "offload_optimizer": False, "offload_parameters": False}
    return type(spec).model_validate(data)


def _boundary(gib: float) -> int:
    """The largest parameter count the plain path takes on a GPU of `gib`."""
    return int(GPU_FRACTION * gib * GIB) // TRAINING_STATE_BYTES_PER_PARAMETER


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_engine_choice_matches_the_trainers_choose_engine_kind(monkeypatch, mode, stage):
    torch = pytest.importorskip("torch")
    from cpt_trainer.train import engines

    run, corpora, policy = _legal_inputs()
    spec = _with(run.spec, mode, stage)
    cfg = render_trainer_config(run.namespace, run.name, spec, corpora, policy)
    for gib in (16.0, 23.5, 40.0, 80.0, 141.0):
        monkeypatch.setattr(engines.torch.cuda, "get_device_properties", lambda device, gib=gib: SimpleNamespace(total_memory=int(gib * GIB)))
        edge = _boundary(gib)
        for parameters in (1, 125_000_000, edge - 1, edge, edge + 1, 8_000_000_000, 70_000_000_000):
            for device, on_gpu in ((torch.device("cuda", 0), True), (torch.device("cpu"), False)):
                trainer_kind = engines.choose_engine_kind(cfg, device, parameters)
                choice = engine_choice(spec, parameters, gib, on_gpu=on_gpu)
                assert choice.kind == trainer_kind, (mode, stage, gib, parameters, device)
                assert choice.zero_stage == (cfg.engine.zero_stage if trainer_kind == "deepspeed" else 0)
                assert choice.compile == cfg.engine.compile
                assert choice.precision == (cfg.engine.precision if on_gpu else "fp32")
                if on_gpu:  # the memory estimate's stage is the trainer's too
                    assert effective_zero_stage(spec, parameters, gib) == choice.zero_stage


def test_the_boundary_is_the_trainers_16_bytes_in_half_a_gpu():
    # the trainer writes `16 * parameters <= total / 2` (engines.choose_engine_kind)
    assert (TRAINING_STATE_BYTES_PER_PARAMETER, GPU_FRACTION) == (16, 0.5)
    run, _, _ = _legal_inputs()
    spec = _with(run.spec, "auto", 3)
    edge = _boundary(80.0)
    assert edge == 2_684_354_560
    assert engine_choice(spec, edge, 80.0).kind == "torch"
    assert engine_choice(spec, edge + 1, 80.0).kind == "deepspeed"
