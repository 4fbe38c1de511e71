import pytest

from cpt_trainer.contract.config import TrainerConfig
from cpt_trainer.train.deepspeed_config import build_deepspeed_config

deepspeed_config = pytest.importorskip("deepspeed.runtime.config")


def _cfg(**engine) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "identity": {"namespace": "ns", "name": "r"},
            "model": {"uri": "/models/base"},
            "data": {"corpora": [{"name": "d", "role": "domain", "weight": 1.0, "uri": "/data/d"}]},
            "batch": {"micro_batch_size": 4, "global_batch_size": 64, "total_steps": 100},
            "engine": {"kind": "deepspeed", **engine},
            "checkpoint": {"uri": "/ckpt"},
        }
    )


def _parse(config: dict, world_size: int, monkeypatch):
    """DeepSpeed's own config class, as a job of `world_size` ranks would parse it."""
    monkeypatch.setattr(deepspeed_config.dist, "get_world_size", lambda *a, **k: world_size)
    monkeypatch.setattr(deepspeed_config.dist, "get_rank", lambda *a, **k: 0)
    return deepspeed_config.DeepSpeedConfig(config)


CASES = [
    {"zero_stage": 0},
    {"zero_stage": 1},
    {"zero_stage": 2},
    {"zero_stage": 3},
    {"zero_stage": 2, "offload_optimizer": True},
    {"zero_stage": 3, "offload_optimizer": True, "offload_parameters": True},
    {"zero_stage": 2, "precision": "fp32"},
]


@pytest.mark.parametrize("engine", CASES, ids=lambda e: "-".join(f"{k}={v}" for k, v in e.items()))
@pytest.mark.parametrize("world_size", [1, 8])
def test_deepspeed_accepts_the_generated_config(engine, world_size, monkeypatch):
    cfg = _cfg(**engine)
    parsed = _parse(build_deepspeed_config(cfg, world_size), world_size, monkeypatch)
    assert parsed.world_size == world_size
    assert parsed.zero_optimization_stage == engine["zero_stage"]
    assert parsed.train_batch_size == 64
    assert parsed.train_micro_batch_size_per_gpu == 4
    assert parsed.gradient_accumulation_steps == 64 // (4 * world_size)
    assert parsed.gradient_clipping == cfg.optim.grad_clip
    bf16 = engine.get("precision", "bf16") == "bf16"
    # Stage 0 keeps fp32 weights under autocast; stages 1-3 hold bf16 weights.
    assert parsed.bfloat16_config.enabled == (bf16 and engine["zero_stage"] > 0)
    assert parsed.torch_autocast_enabled == (bf16 and engine["zero_stage"] == 0)
    offload_opt = parsed.zero_config.offload_optimizer
    assert (offload_opt is not None and offload_opt.device == "cpu") == engine.get("offload_optimizer", False)
    offload_param = parsed.zero_config.offload_param
    assert (offload_param is not None and offload_param.device == "cpu") == engine.get("offload_parameters", False)
    if engine.get("offload_optimizer"):
        assert parsed.optimizer_name == "adamw"


def test_a_batch_that_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="not a multiple"):
        build_deepspeed_config(_cfg(zero_stage=2), world_size=3)
