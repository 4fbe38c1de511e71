import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cpt_trainer.contract.config import TrainerConfig
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


def test_cpu_honours_deepspeed_as_configured_and_auto_takes_the_plain_pytorch_path():
    # DeepSpeed runs on CPU (its CPU accelerator over gloo): ZeRO 1-3 with 2 ranks are trained
    # and resumed in test_multirank_engines.py, so the choice is never refused nor replaced.
    for stage in (0, 1, 2, 3):
        assert choose_engine_kind(_cfg(kind="deepspeed", zero_stage=stage), torch.device("cpu"), 10**9) == "deepspeed"
    offload = _cfg(kind="deepspeed", zero_stage=3, offload_optimizer=True, offload_parameters=True)
    assert choose_engine_kind(offload, torch.device("cpu"), 10**9) == "deepspeed"
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


@pytest.mark.slow
def test_deepspeed_on_cpu_runs_as_one_plain_process(make_config, tmp_path):
    # Local mode: no torchrun, so no RANK/WORLD_SIZE/MASTER_*; DeepSpeed would look for MPI
    # (mpi4py) without the engine's one-rank process group. A subprocess keeps that group and
    # DS_ACCELERATOR out of the test process.
    ck = tmp_path / "ck"
    config = make_config(
        batch={"micro_batch_size": 2, "global_batch_size": 4, "total_steps": 4},
        engine={"kind": "deepspeed", "zero_stage": 3, "device": "cpu", "compile": False, "precision": "bf16"},
        eval={"interval": 4, "max_batches": 1},
        checkpoint={"interval": 2, "uri": str(ck)},
    )
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launcher}
    env.update(OMP_NUM_THREADS="1", CPT_CACHE_DIR=str(tmp_path / "cache"))
    trainer = str(Path(sys.executable).with_name("cpt-trainer"))
    done = subprocess.run([trainer, "train", "--config", str(config)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DeepSpeed computes in fp32 on cpu" in done.stderr
    state_file = ck / "step-00000004" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["engine"] == "deepspeed" and state["zero_stage"] == 3 and state["world_size"] == 1
    assert (ck / "step-00000004" / "COMPLETE").is_file()
    # Another ZeRO stage cannot load these partitions: refused before DeepSpeed's own assertion.
    state_file.write_text(json.dumps({**state, "zero_stage": 2}))
    refused = subprocess.run([trainer, "train", "--config", str(config)], env=env, capture_output=True, text=True,
                             timeout=300)
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "written by DeepSpeed ZeRO stage 2, world size 1, this run is ZeRO stage 3, world size 1" in last, last
    assert "Traceback" not in refused.stderr, refused.stderr[-3000:]


def _tiny_torch_engine(compile_: bool):
    from cpt_trainer.tinymodel import build_tiny_llama
    from cpt_trainer.train.distributed import DistEnv
    from cpt_trainer.train.engines import TorchEngine

    model = build_tiny_llama(64, None, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    cfg = _cfg(kind="torch", device="cpu", compile=compile_, precision="fp32")
    return TorchEngine(model, cfg, DistEnv(), torch.device("cpu"), accumulation=1)


def test_torch_engine_on_cpu_honours_compile_and_keeps_the_plain_module_for_eval_and_checkpoints(caplog):
    # inductor's CPU backend (a C++ compiler is on this machine): compiled, no fallback WARNING;
    # eval and save use `engine.model`, whose keys carry no `_orig_mod.` prefix.
    with caplog.at_level("WARNING", logger="cpt_trainer.train.engines"):
        engine = _tiny_torch_engine(compile_=True)
    assert isinstance(engine.train_module, torch._dynamo.eval_frame.OptimizedModule)
    assert engine.train_module._orig_mod is engine.model
    assert not any(k.startswith("_orig_mod.") for k in engine.model.state_dict())
    assert "training eagerly" not in caplog.text


def test_torch_engine_without_a_cpp_compiler_trains_eagerly_and_says_why_in_one_line(caplog):
    from torch._inductor import config as inductor_config

    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        with caplog.at_level("WARNING", logger="cpt_trainer.train.engines"):
            engine = _tiny_torch_engine(compile_=True)
    assert engine.train_module is engine.model
    lines = [r.getMessage() for r in caplog.records if "training eagerly" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "No working C++ compiler found" in lines[0] and "/nonexistent/c++" in lines[0], lines[0]
