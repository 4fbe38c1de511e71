import pytest
import torch

from cpt_trainer.contract.config import TrainerConfig
from cpt_trainer.train.errors import TrainerInputError
from cpt_trainer.train.engines import choose_engine_kind, training_state_bytes_per_gpu


def _cfg(**engine) -> TrainerConfig:
    return TrainerConfig.model_validate({
        "identity": {"namespace": "ns", "name": "r"},
        "model": {"uri": "/m"},
        "data": {"corpora": [{"name": "d", "role": "domain", "weight": 1.0, "uri": "/d"}], "alpha": 1.0},
        "batch": {"micro_batch_size": 4, "global_batch_size": 64, "total_steps": 10},
        "engine": engine,
        "checkpoint": {"uri": "/c"},
    })


def test_cpu_refuses_deepspeed_with_an_actionable_message_and_auto_takes_the_plain_pytorch_path():
    with pytest.raises(TrainerInputError, match="engine.kind deepspeed runs on GPU only.*set engine.kind torch"):
        choose_engine_kind(_cfg(kind="deepspeed", zero_stage=3), torch.device("cpu"), 10**9)
    assert choose_engine_kind(_cfg(kind="torch"), torch.device("cpu"), 10**9) == "torch"
    assert choose_engine_kind(_cfg(), torch.device("cpu"), 10**9) == "torch"


def test_state_estimate_shrinks_with_zero_stage_and_offload():
    n, w = 7 * 10**9, 8
    torch_path = training_state_bytes_per_gpu("torch", _cfg(kind="torch"), n, w)
    z2 = training_state_bytes_per_gpu("deepspeed", _cfg(kind="deepspeed", zero_stage=2), n, w)
    z3 = training_state_bytes_per_gpu("deepspeed", _cfg(kind="deepspeed", zero_stage=3), n, w)
    z3_off = training_state_bytes_per_gpu(
        "deepspeed", _cfg(kind="deepspeed", zero_stage=3, offload_optimizer=True, offload_parameters=True), n, w)
    assert torch_path == 16 * n
    assert z2 == pytest.approx(2 * n + 14 * n / w)
    assert z3 == pytest.approx(16 * n / w)
    assert z3_off == pytest.approx(2 * n / w)
    assert torch_path > z2 > z3 > z3_off
