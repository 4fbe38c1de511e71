"""Which engine, ZeRO stage, precision and compile mode the trainer will run, and why (pure).

The trainer decides at start (`cpt_trainer.train.engines.choose_engine_kind`), from the engine
section the operator renders (`render/trainer_config.py`: deepspeed.mode auto/always/never ->
engine.kind auto/deepspeed/torch; zeroStage, training.precision and training.compile as given):

- `always` -> DeepSpeed at the spec's zeroStage; `never` -> plain PyTorch (DDP, no ZeRO);
- `auto` on GPU -> plain PyTorch when the full training state (16 bytes/parameter: fp32
  weights, gradients, two Adam moments) fits in half of one GPU's memory, else DeepSpeed at the
  spec's zeroStage; `auto` on CPU -> plain PyTorch;
- bf16 is a GPU precision: on CPU both engines compute in fp32 (and the trainer warns).

The trainer writes the rule with literal numbers (no constants to import); the two below are
the same numbers, and tests/api/test_api_plan_engine.py calls the trainer's
`choose_engine_kind` on the same inputs so that a change on either side fails a test.
`plan_report.effective_zero_stage` is the same rule for the memory estimate (tested too).
"""

from __future__ import annotations

from dataclasses import dataclass

from cpt_operator.api.cptrun import CPTRunSpec

# The trainer's `auto` rule (engines.choose_engine_kind): torch when
# TRAINING_STATE_BYTES_PER_PARAMETER x parameters <= GPU_FRACTION x one GPU's memory.
TRAINING_STATE_BYTES_PER_PARAMETER = 16
GPU_FRACTION = 0.5

_GIB = 2**30


@dataclass(frozen=True)
class EngineChoice:
    kind: str  # "torch", "deepspeed", or "auto" when the trainer decides at start
    zero_stage: int | None  # 0 for torch; the spec's stage for deepspeed; None when undecided
    precision: str  # the compute precision: "bf16" or "fp32"
    compile: bool
    reason: str

    def describe(self) -> str:
        """`deepspeed ZeRO-3, bf16, compile on (why)`."""
        if self.kind == "deepspeed":
            engine = f"deepspeed ZeRO-{self.zero_stage}"
        elif self.kind == "torch":
            engine = "torch"
        else:
            engine = "decided at start (torch or deepspeed)"
        return f"{engine}, {self.precision}, compile {'on' if self.compile else 'off'} ({self.reason})"


def _count(parameters: int) -> str:
    if parameters >= 10**9:
        return f"{parameters / 1e9:.1f}B"
    if parameters >= 10**6:
        return f"{parameters / 1e6:.1f}M"
    return f"{parameters:,}"


def _gib(gib: float) -> str:
    return f"{gib:g} GiB"


def engine_choice(spec: CPTRunSpec, parameters: int | None, gpu_memory_gib: float | None, on_gpu: bool = True) -> EngineChoice:
    """The engine the trainer will choose for `spec` with a model of `parameters` on GPUs of
    `gpu_memory_gib` each (on CPU when `on_gpu` is false); None: not known here."""
    d, t = spec.deepspeed, spec.training
    stage = d.zero_stage
    if d.mode == "always":
        kind, zero, why = "deepspeed", stage, "deepspeed.mode always"
    elif d.mode == "never":
        kind, zero, why = "torch", 0, "deepspeed.mode never"
    elif not on_gpu:
        kind, zero, why = "torch", 0, "auto: plain PyTorch on CPU"
    elif parameters is None or gpu_memory_gib is None:
        unknown = " and ".join(w for w, v in (("the model's parameter count", parameters), ("one GPU's memory", gpu_memory_gib)) if v is None)
        kind, zero = "auto", None
        why = (
            f"auto: the trainer decides at start from the parameters it counts in the model's weights and one GPU's "
            f"memory: torch when {TRAINING_STATE_BYTES_PER_PARAMETER} bytes/parameter of training state fit in half "
            f"of it, else deepspeed ZeRO-{stage}; {unknown} not known here"
        )
    else:
        need = TRAINING_STATE_BYTES_PER_PARAMETER * parameters
        budget = GPU_FRACTION * gpu_memory_gib * _GIB
        fits = need <= budget
        kind, zero = ("torch", 0) if fits else ("deepspeed", stage)
        relation = "at most" if fits else "more than"
        why = (
            f"auto: {_count(parameters)} parameters need {need / _GIB:.1f} GiB of training state, "
            f"{relation} half of one {_gib(gpu_memory_gib)} GPU"
        )
    precision = t.precision
    if not on_gpu and precision == "bf16":
        precision = "fp32"
        why += "; bf16 applies on GPU only: on CPU the trainer computes in fp32"
    if not on_gpu and t.compile and kind != "deepspeed":
        why += "; torch.compile on CPU needs a C++ compiler, else the trainer trains eagerly (with a warning)"
    return EngineChoice(kind, zero, precision, t.compile, why)
