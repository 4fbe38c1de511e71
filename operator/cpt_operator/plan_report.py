"""Build and print the plan of each CPTRun in a set of manifests (`cpt plan`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.common import describe_location, overlap
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.api.references import reference_problems
from cpt_operator.api.resources import Resource
from cpt_operator.plan import ComputeEstimate, MemoryFit, ModelShape, estimate_compute, estimate_memory, model_shape
from cpt_operator.render.trainer_config import total_steps
from cpt_operator.settings import OperatorSettings


class PlanError(Exception):
    """Resources that do not work together; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass
class RunPlan:
    run: Resource
    steps: int
    shape: ModelShape | None
    compute: ComputeEstimate | None
    memory: MemoryFit | None
    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    zero_stage: int | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"namespace": self.run.namespace, "name": self.run.name, "steps": self.steps, "notes": self.notes,
                               "zero_stage": self.zero_stage, "warnings": self.warnings}  # fmt: skip
        out["compute"] = dataclasses.asdict(self.compute) if self.compute else None
        if self.memory:
            out["memory"] = {**dataclasses.asdict(self.memory), "total": self.memory.total, "fits": self.memory.fits}
        out["objects"] = self.objects
        return out


def effective_zero_stage(spec: CPTRunSpec, parameters: int, gpu_memory_gib: float) -> int:
    """The ZeRO stage the trainer will use: its `auto` rule takes plain PyTorch (stage 0) when the
    16 bytes/parameter training state fits in half of one GPU."""
    mode = spec.deepspeed.mode
    if mode == "never" or (mode == "auto" and 16 * parameters <= 0.5 * gpu_memory_gib * 2**30):
        return 0
    return spec.deepspeed.zero_stage


def _pool_problems(run: Resource, settings: OperatorSettings) -> list[str]:
    spec: CPTRunSpec = run.spec  # type: ignore[assignment]
    pool = settings.pool(spec.resources.node_pool)
    where = f"CPTRun {run.namespace}/{run.name}: spec.resources.nodePool"
    if pool is None:
        known = ", ".join(p.name for p in settings.node_pools) or "none"
        return [f"{where} {spec.resources.node_pool!r} is not a node pool of this installation (known: {known})"]
    problems = []
    if not pool.allows(run.namespace):
        problems.append(f"{where} {pool.name!r} may not be used from namespace {run.namespace}")
    if spec.resources.gpus_per_node > pool.gpus_per_node:
        problems.append(
            f"CPTRun {run.namespace}/{run.name}: spec.resources.gpusPerNode {spec.resources.gpus_per_node} exceeds "
            f"the {pool.gpus_per_node} GPUs per node of pool {pool.name!r}"
        )
    image = spec.trainer.image
    if image and not settings.image_allowed(image):
        problems.append(f"CPTRun {run.namespace}/{run.name}: spec.trainer.image {image!r} is not allowed by this installation")
    return problems


def output_problems(resources: list[Resource]) -> list[str]:
    """Corpora whose outputs are the same place, or one inside the other: each curation
    would overwrite (or read) the other's shards."""
    corpora = [r for r in resources if r.kind == "Corpus"]
    problems = []
    for i, a in enumerate(corpora):
        for b in corpora[i + 1 :]:
            relation = overlap(a.spec.output, b.spec.output, a.namespace, b.namespace)  # type: ignore[union-attr]
            if relation:
                what = {"equals": "is the output of", "inside": "lies inside the output of", "contains": "contains the output of"}
                problems.append(
                    f"Corpus {a.namespace}/{a.name}: spec.output {describe_location(a.spec.output)} "  # type: ignore[union-attr]
                    f"{what[relation]} Corpus {b.namespace}/{b.name} ({describe_location(b.spec.output)}): "  # type: ignore[union-attr]
                    "each curation would overwrite the other's shards; give each Corpus its own output"
                )
    return problems


def run_warnings(spec: CPTRunSpec, steps: int, policy: CheckpointPolicySpec | None) -> list[str]:
    """What still works but probably is not what was meant, naming the field."""
    out = []
    if spec.evaluation.interval > steps:
        out.append(
            f"spec.evaluation.interval {spec.evaluation.interval} is longer than the run ({steps} steps): "
            "only the baseline evaluation runs, so the forgetting monitor never acts"
        )
    late = [p.step for p in spec.mixing.curriculum if p.step > steps]
    if late:
        out.append(f"spec.mixing.curriculum: step(s) {', '.join(map(str, late[:5]))} lie beyond the run's {steps} steps and never apply")
    if policy is not None and policy.save_interval > steps:
        out.append(
            f"the CheckpointPolicy's saveInterval {policy.save_interval} is longer than the run ({steps} steps): "
            "no intermediate checkpoint is saved"
        )
    return out


def _objects(run: Resource, rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Of everything rendered, the objects of this run: its corpora's curation ConfigMaps and
    Jobs, then its trainer ConfigMap and PyTorchJob."""
    from cpt_operator.render.names import LABEL_CORPUS, LABEL_RUN

    spec: CPTRunSpec = run.spec  # type: ignore[assignment]
    names = {c.name for c in spec.corpora} | {g.corpus for g in spec.evaluation.general_evals if g.corpus}
    mine: list[dict[str, Any]] = []
    for obj in rendered:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != run.namespace:
            continue
        if labels.get(LABEL_RUN) == run.name or labels.get(LABEL_CORPUS) in names:
            mine.append(obj)
    return mine


def build_plans(resources: list[Resource], settings: OperatorSettings) -> list[RunPlan]:
    """A plan per CPTRun; raises PlanError when references or pools do not resolve."""
    from cpt_operator.render import render_all

    problems = reference_problems(resources) + output_problems(resources)
    runs = [r for r in resources if r.kind == "CPTRun"]
    for run in runs:
        problems += _pool_problems(run, settings)
    if problems:
        raise PlanError(problems)
    rendered = render_all(resources, settings) if runs else []
    plans = []
    for run in runs:
        spec: CPTRunSpec = run.spec  # type: ignore[assignment]
        pool = settings.pool(spec.resources.node_pool)
        assert pool is not None  # checked above
        gpus = spec.resources.nodes * spec.resources.gpus_per_node
        shape = model_shape(spec)
        notes = []
        compute = memory = None
        zero = None
        if shape is None:
            notes.append("no compute or memory estimate: set spec.baseModel.parameters (or use a local model with config.json)")
        else:
            compute = estimate_compute(
                shape.parameters, spec.training.total_tokens, gpus, settings.achieved_tflops_per_gpu, settings.price_per_gpu_hour
            )
            zero = effective_zero_stage(spec, shape.parameters, pool.gpu_memory_gib)
            memory = estimate_memory(
                shape, gpus, zero, spec.deepspeed.offload_optimizer, spec.deepspeed.offload_parameters,
                spec.training.micro_batch_size, spec.training.sequence_length, spec.training.gradient_checkpointing,
                spec.training.precision, pool.gpu_memory_gib,
            )  # fmt: skip
        steps = total_steps(spec)
        policy = next(
            (r.spec for r in resources if r.kind == "CheckpointPolicy" and r.namespace == run.namespace and r.name == spec.checkpoint_policy_ref.name),
            None,
        )
        warnings = run_warnings(spec, steps, policy)  # type: ignore[arg-type]
        plans.append(RunPlan(run, steps, shape, compute, memory, _objects(run, rendered), notes, zero, warnings))
    return plans


def _gib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**30:.1f} GiB"


def format_plan(plan: RunPlan, show_objects: bool = True) -> str:
    spec: CPTRunSpec = plan.run.spec  # type: ignore[assignment]
    r = spec.resources
    lines = [
        f"CPTRun {plan.run.namespace}/{plan.run.name}",
        f"  hardware      {r.nodes} node(s) x {r.gpus_per_node} GPU(s) on pool {r.node_pool}",
        f"  training      {spec.training.total_tokens:,} tokens = {plan.steps:,} steps x {spec.training.global_batch_size} "
        f"sequences x {spec.training.sequence_length} tokens",
        f"  mixing        alpha {spec.mixing.alpha} over " + ", ".join(f"{c.name} ({c.role}, w={c.weight:g})" for c in spec.corpora),
    ]
    if plan.shape and plan.compute:
        c = plan.compute
        lines += [
            f"  model         {plan.shape.parameters:,} parameters (from {plan.shape.source})",
            f"  compute       6 x N x D = {c.flops:.3e} FLOPs",
            f"  GPU-hours     {c.gpu_hours:,.1f} at {c.achieved_tflops_per_gpu:g} TFLOP/s per GPU "
            f"({c.wall_hours:,.1f} h wall on {c.gpus} GPUs)",
            f"  cost          {c.cost:,.2f} at {c.price_per_gpu_hour:g} per GPU-hour",
        ]
    if plan.memory:
        m = plan.memory
        engine = "plain PyTorch" if plan.zero_stage == 0 and spec.deepspeed.mode != "always" else f"DeepSpeed ZeRO-{plan.zero_stage}"
        verdict = "fits" if m.fits else "DOES NOT FIT"
        lines += [
            f"  memory/GPU    {engine}: weights {_gib(m.weights)}, gradients {_gib(m.gradients)}, optimizer {_gib(m.optimizer)}, "
            f"activations {_gib(m.activations)}, overhead {_gib(m.overhead)}",
            f"                total {_gib(m.total)} of {_gib(m.gpu_memory_bytes)}: {verdict}",
        ]
        lines += [f"                note: {n}" for n in m.notes]
    lines += [f"  note          {n}" for n in plan.notes]
    lines += [f"  warning       {w}" for w in plan.warnings]
    if show_objects and plan.objects:
        lines.append("  objects the operator would create:")
        body = yaml.safe_dump_all(plan.objects, sort_keys=False, width=120)
        lines += ["    " + line for line in body.splitlines()]
    return "\n".join(lines)
