"""Planning arithmetic for `cpt plan` (pure functions, no torch).

- Compute: FLOPs = 6 x N x D; GPU-hours = FLOPs / (achieved FLOP/s per GPU x 3600).
- Memory per GPU (mixed-precision AdamW, the ZeRO paper's accounting): bf16 weights 2 B,
  bf16 gradients 2 B, fp32 master weights + Adam m and v 12 B per parameter; ZeRO 1
  shards the 12 B, ZeRO 2 also the gradients, ZeRO 3 also the weights, across all GPUs.
  CPU offload moves optimizer states (and, with ZeRO 3, parameters) off the GPU.
  Activations per GPU ~ 34 x s x b x h x L bytes with fused (SDPA/flash) attention
  (Korthikanti et al. 2022, without the s^2 term), or 2 x s x b x h x L plus one layer's
  worth with gradient checkpointing; plus fp32 logits, b x s x V x 4 bytes, when V is known.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cpt_operator.api.cptrun import CPTRunSpec

GIB = 2**30
# CUDA context, allocator fragmentation, communication buffers: a flat allowance.
RUNTIME_OVERHEAD_BYTES = 2 * GIB


@dataclass(frozen=True)
class ModelShape:
    parameters: int
    hidden_size: int | None = None
    num_layers: int | None = None
    vocab_size: int | None = None
    source: str = "spec hint"


def llama_parameters(cfg: dict) -> int:
    """Parameter count of a Llama-style decoder from its transformers config.json."""
    h = int(cfg["hidden_size"])
    layers = int(cfg["num_hidden_layers"])
    vocab = int(cfg["vocab_size"])
    inter = int(cfg.get("intermediate_size", 4 * h))
    heads = int(cfg.get("num_attention_heads", max(1, h // 128)))
    kv_heads = int(cfg.get("num_key_value_heads", heads))
    head_dim = int(cfg.get("head_dim") or h // heads)
    attn = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
    mlp = 3 * h * inter
    norms = 2 * h
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    return layers * (attn + mlp + norms) + embed + h


def model_shape(spec: CPTRunSpec) -> ModelShape | None:
    """The base model's shape from its config.json (local location) or the spec's hints."""
    base = spec.base_model
    if base.location.local is not None:
        config = Path(base.location.local.path) / "config.json"
        if config.is_file():
            cfg = json.loads(config.read_text())
            return ModelShape(
                parameters=llama_parameters(cfg),
                hidden_size=int(cfg["hidden_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                vocab_size=int(cfg["vocab_size"]),
                source=str(config),
            )
    if base.parameters is None:
        return None
    return ModelShape(base.parameters, base.hidden_size, base.num_layers, None, "spec hint")


@dataclass(frozen=True)
class ComputeEstimate:
    parameters: int
    tokens: int
    flops: float
    gpus: int
    gpu_hours: float
    wall_hours: float
    cost: float
    achieved_tflops_per_gpu: float
    price_per_gpu_hour: float


def estimate_compute(
    parameters: int, tokens: int, gpus: int, achieved_tflops_per_gpu: float, price_per_gpu_hour: float
) -> ComputeEstimate:
    """FLOPs = 6 N D; GPU-hours at the achieved TFLOP/s per GPU; cost at the price per GPU-hour."""
    flops = 6.0 * parameters * tokens
    gpu_hours = flops / (achieved_tflops_per_gpu * 1e12 * 3600.0)
    return ComputeEstimate(
        parameters=parameters,
        tokens=tokens,
        flops=flops,
        gpus=gpus,
        gpu_hours=gpu_hours,
        wall_hours=gpu_hours / gpus,
        cost=gpu_hours * price_per_gpu_hour,
        achieved_tflops_per_gpu=achieved_tflops_per_gpu,
        price_per_gpu_hour=price_per_gpu_hour,
    )


@dataclass(frozen=True)
class MemoryFit:
    gpu_memory_bytes: float
    weights: float
    gradients: float
    optimizer: float
    activations: float | None
    overhead: float
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + (self.activations or 0.0) + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory_bytes


def estimate_memory(
    shape: ModelShape,
    gpus: int,
    zero_stage: int,
    offload_optimizer: bool,
    offload_parameters: bool,
    micro_batch_size: int,
    sequence_length: int,
    gradient_checkpointing: bool,
    precision: str,
    gpu_memory_gib: float,
) -> MemoryFit:
    """Bytes per GPU for the model states and activations of one training configuration."""
    n = float(shape.parameters)
    if precision == "bf16":
        w_bytes, g_bytes, o_bytes = 2.0, 2.0, 12.0
    else:
        w_bytes, g_bytes, o_bytes = 4.0, 4.0, 8.0
    weights, grads, optim = w_bytes * n, g_bytes * n, o_bytes * n
    if zero_stage >= 1:
        optim /= gpus
    if zero_stage >= 2:
        grads /= gpus
    if zero_stage >= 3:
        weights /= gpus
    notes: list[str] = []
    if offload_optimizer:
        optim = 0.0
        notes.append("optimizer states offloaded to CPU memory")
    if offload_parameters:
        weights = 0.0
        notes.append("parameters offloaded to CPU memory")
    activations: float | None = None
    if shape.hidden_size and shape.num_layers:
        s, b, h, layers = sequence_length, micro_batch_size, shape.hidden_size, shape.num_layers
        per_layer = 34.0 * s * b * h
        activations = (2.0 * s * b * h * layers + per_layer) if gradient_checkpointing else per_layer * layers
        if precision != "bf16":
            activations *= 2.0
        if shape.vocab_size:
            activations += 4.0 * b * s * shape.vocab_size
    else:
        notes.append("activations not estimated: set spec.baseModel.hiddenSize and numLayers")
    return MemoryFit(gpu_memory_gib * GIB, weights, grads, optim, activations, RUNTIME_OVERHEAD_BYTES, notes)
