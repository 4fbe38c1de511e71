"""Planning arithmetic for `cpt plan` (pure functions, no torch).

- Compute: FLOPs = 6 x N x D; GPU-hours = FLOPs / (achieved FLOP/s per GPU x 3600).
- Model states per GPU (parameters, gradients, optimizer states): DeepSpeed's own estimator,
  reimplemented without importing it (see `deepspeed_model_states`); plain PyTorch (ZeRO 0)
  holds 16 B per parameter. Activations are a separate figure:
  activations per GPU ~ 34 x s x b x h x L bytes with fused (SDPA/flash) attention
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


# Llama 3's vocabulary: the largest layer of a decoder is its embedding (or LM head), vocab x hidden.
DEFAULT_VOCAB_SIZE = 128_256


def largest_layer_parameters(shape: ModelShape) -> int:
    """Parameters of the model's largest layer, the `largest_layer_params` of DeepSpeed's ZeRO-3
    estimator (the largest module's own parameters: for a decoder the embedding or LM head,
    vocab x hidden, else an MLP projection, 4 x hidden x hidden at most).

    From config.json when the model is local; else from `spec.baseModel.hiddenSize` with an
    assumed vocabulary of 128,256 (Llama 3's); without hiddenSize, the hidden size is guessed from
    N ~ 12 L h^2 with the usual aspect ratio L ~ h / 128, i.e. h ~ (128 N / 12)^(1/3)."""
    h = shape.hidden_size or max(1, round((128.0 * shape.parameters / 12.0) ** (1.0 / 3.0)))
    vocab = shape.vocab_size or DEFAULT_VOCAB_SIZE
    return min(shape.parameters, max(vocab * h, 4 * h * h))


def deepspeed_model_states(
    total_params: int,
    largest_layer_params: int,
    num_gpus_per_node: int,
    num_nodes: int,
    zero_stage: int,
    cpu_offload: bool,
    cpu_offload_params: bool,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int]:
    """(CPU bytes per node, GPU bytes per GPU) for parameters, gradients and optimizer states, as
    DeepSpeed estimates them (mixed precision, Adam):

    - ZeRO 2: `deepspeed.runtime.zero.stage_1_and_2.estimate_zero2_model_states_mem_needs`
      (what `estimate_zero2_model_states_mem_needs_all_cold` prints): without offload
      GPU = 2 N + int(18 N / G) (16-bit params 2 B; 16-bit grads 2 + fp32 grads 4 + fp32
      params 4 + Adam m, v 8 = 18 B sharded over G GPUs), CPU = 4 N x gpus per node x 1.5;
      with optimizer offload GPU = 2 N, CPU = N x max(4 G, 16) x 1.5.
    - ZeRO 1: DeepSpeed has no stage-1 estimator (stages 1 and 2 share `stage_1_and_2.py`, the
      estimator is documented for ZeRO-2). Our choice: the ZeRO-2 figure plus the 16-bit
      gradients stage 1 does not shard, 2 N (1 - 1/G): conservative, never below ZeRO-2.
    - ZeRO 3: `deepspeed.runtime.zero.stage3.estimate_zero3_model_states_mem_needs` (what
      `estimate_zero3_model_states_mem_needs_all_cold` prints), with L = 4 x largest layer:
      no offload GPU = L + int(18 N / G); optimizer offload GPU = L + int(2 N / G);
      optimizer and parameter offload GPU = L; CPU as there (zero_init and the 1.5 factor).
      Parameter offload without optimizer offload (which the estimator does not cover):
      L + int(16 N / G), the fp16 parameters leaving the GPU.
    """
    n, nodes, per_node = total_params, num_nodes, num_gpus_per_node
    gpus = nodes * per_node
    factor = additional_buffer_factor
    if zero_stage >= 3:
        layer = 4 * largest_layer_params
        gpus_factor = 1 / nodes
        if cpu_offload and cpu_offload_params:
            gpu = layer
            per_param = 18 * gpus_factor
            cpu = n * (per_param if zero_init else max(4 * per_node, per_param)) * factor
        elif cpu_offload:
            gpu = layer + int(2 * n / gpus)
            per_param = 16 * gpus_factor
            cpu = n * (per_param if zero_init else max(4 * per_node, per_param)) * factor
        else:
            gpu = layer + int(18 * n / gpus) - (int(2 * n / gpus) if cpu_offload_params else 0)
            cpu = (largest_layer_params if zero_init else n) * 4 * per_node * factor
            if cpu_offload_params:
                cpu += 2 * n * gpus_factor * factor
        return int(cpu), int(gpu)
    if cpu_offload:
        gpu = 2 * n
        cpu = n * max(4 * gpus, 16) * factor
    else:
        gpu = 2 * n + int(18 * n / gpus)
        cpu = n * 4 * per_node * factor
    if zero_stage == 1:
        gpu += int(2 * n * (1 - 1 / gpus))
    return int(cpu), int(gpu)


@dataclass(frozen=True)
class MemoryFit:
    gpu_memory_bytes: float
    model_states: float  # parameters + gradients + optimizer states per GPU (DeepSpeed's estimator)
    activations: float | None
    overhead: float
    cpu_memory_per_node: float  # model states in CPU memory per node (DeepSpeed's estimator)
    method: str
    largest_layer_parameters: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return self.model_states + (self.activations or 0.0) + self.overhead

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
    nodes: int = 1,
) -> MemoryFit:
    """Bytes per GPU for the model states and activations of one training configuration
    (`gpus` in all, over `nodes` nodes)."""
    n = shape.parameters
    nodes = max(1, min(nodes, gpus))
    per_node = max(1, gpus // nodes)
    notes: list[str] = []
    largest: int | None = None
    if zero_stage == 0:
        # plain PyTorch mixed precision: fp32 weights 4 + fp32 gradients 4 + Adam m, v 8 bytes
        model_states, cpu = 16.0 * n, 0.0
        method = "plain PyTorch/ZeRO-0: 16 bytes per parameter"
        if offload_optimizer or offload_parameters:
            notes.append("offload needs DeepSpeed ZeRO 1-3: ignored at ZeRO 0")
    else:
        largest = largest_layer_parameters(shape) if zero_stage >= 3 else None
        cpu_i, gpu_i = deepspeed_model_states(
            n, largest or 0, per_node, nodes, zero_stage, offload_optimizer, offload_parameters and zero_stage >= 3
        )
        model_states, cpu = float(gpu_i), float(cpu_i)
        method = (
            "DeepSpeed's stage3.estimate_zero3_model_states_mem_needs" if zero_stage >= 3
            else "DeepSpeed's stage_1_and_2.estimate_zero2_model_states_mem_needs"
        )  # fmt: skip
        if zero_stage == 1:
            method += " + unsharded 16-bit gradients (ZeRO-1)"
        if precision != "bf16":
            # fp32 training has no 16-bit copy of the weights: 4 B instead of 2 B where it is held
            held = 0.0 if (zero_stage >= 3 and offload_parameters) else (2.0 * n / gpus if zero_stage >= 3 else 2.0 * n)
            model_states += held
            notes.append("fp32: 4-byte parameters on the GPU (DeepSpeed's estimator assumes 16-bit)")
        if offload_optimizer:
            notes.append("optimizer states offloaded to CPU memory")
        if offload_parameters and zero_stage >= 3:
            notes.append("parameters offloaded to CPU memory")
        if zero_stage >= 3:
            notes.append(f"largest layer {largest:,} parameters ({'config.json' if shape.vocab_size else 'assumed vocab x hidden'})")
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
    return MemoryFit(gpu_memory_gib * GIB, model_states, activations, RUNTIME_OVERHEAD_BYTES, cpu, method, largest, notes)
