"""The DeepSpeed config, generated from the run's TrainerConfig (never hand-written by tenants).

The trainer drives the LR itself (the same `LRSchedule` as the plain PyTorch path), so the
config names no scheduler. Without offload the optimizer is the client's torch AdamW (fused
on GPU); with CPU offload DeepSpeed's own CPU Adam must run the update, so the config
names an AdamW optimizer for DeepSpeed to build (DeepSpeed JIT-compiles that op: a C++
compiler in the image). The same config runs on CPU (DeepSpeed's CPU accelerator, gloo):
there the engine asks for fp32, since bf16 is a GPU precision in this trainer.
"""

from __future__ import annotations

from typing import Any

from cpt_trainer.contract.config import TrainerConfig


def gradient_accumulation_steps(cfg: TrainerConfig, world_size: int) -> int:
    per_step = cfg.batch.micro_batch_size * world_size
    if cfg.batch.global_batch_size % per_step:
        raise ValueError(
            f"batch.global_batch_size {cfg.batch.global_batch_size} is not a multiple of "
            f"micro_batch_size {cfg.batch.micro_batch_size} x world size {world_size}"
        )
    return cfg.batch.global_batch_size // per_step


def build_deepspeed_config(cfg: TrainerConfig, world_size: int) -> dict[str, Any]:
    """A DeepSpeed config dict for `deepspeed.initialize(config=...)`."""
    engine = cfg.engine
    bf16 = engine.precision == "bf16"
    zero: dict[str, Any] = {
        "stage": engine.zero_stage,
        # Overlap the gradient reduce with backward; contiguous buffers avoid fragmentation.
        "overlap_comm": engine.zero_stage > 0,
        "contiguous_gradients": True,
        # 200M-element buckets: few, large collectives (a 1.1B model reduces in ~6 of them).
        "reduce_bucket_size": 200_000_000,
        "allgather_bucket_size": 200_000_000,
        "reduce_scatter": True,
    }
    if engine.zero_stage == 3:
        zero.update(
            {
                # Keep small parameters resident and prefetch the next layers' shards.
                "stage3_prefetch_bucket_size": 50_000_000,
                "stage3_param_persistence_threshold": 1_000_000,
                "stage3_max_live_parameters": 1_000_000_000,
                "stage3_max_reuse_distance": 1_000_000_000,
                # Checkpoints hold a loadable, consolidated model as well as the shards.
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
        del zero["allgather_bucket_size"]
    if engine.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if engine.offload_parameters:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    config: dict[str, Any] = {
        "train_batch_size": cfg.batch.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.batch.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(cfg, world_size),
        "gradient_clipping": cfg.optim.grad_clip,
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "steps_per_print": 1_000_000_000,  # the trainer logs; DeepSpeed stays quiet
        "wall_clock_breakdown": False,
    }
    # Weights must stay fp32 somewhere: CPT learning rates (~3e-5) make updates smaller than
    # a bf16 weight's resolution. Stage 0: fp32 weights with bf16 autocast (as the plain
    # path); stage 1: bf16 weights, fp32 master copy and fp32 gradient accumulation
    # (DeepSpeed's BF16 optimizer); stages 2-3: bf16 weights with fp32 master partitions.
    if bf16 and engine.zero_stage == 0:
        config["bf16"] = {"enabled": False}
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    else:
        config["bf16"] = {"enabled": bf16}
    if bf16 and engine.zero_stage == 1 and not engine.offload_optimizer:
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    if engine.offload_optimizer or engine.offload_parameters:
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": cfg.optim.learning_rate,
                "betas": [cfg.optim.beta1, cfg.optim.beta2],
                "eps": cfg.optim.eps,
                "weight_decay": cfg.optim.weight_decay,
            },
        }
    return config
