"""Build and print the plan of each CPTRun in a set of manifests (`cpt plan`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cpt_trainer.contract.task_file import TaskFileError, read_task_file

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.common import describe_location, overlap
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.api.references import reference_problems
from cpt_operator.api.resources import Resource
from cpt_operator.decide.engine_choice import EngineChoice, engine_choice
from cpt_operator.plan import GIB, ComputeEstimate, MemoryFit, ModelShape, estimate_compute, estimate_memory, model_shape
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
    advice: list[str] = field(default_factory=list)
    engine: EngineChoice | None = None  # the engine, ZeRO stage, precision and compile mode the trainer will run, and why

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"namespace": self.run.namespace, "name": self.run.name, "steps": self.steps, "notes": self.notes,
                               "zero_stage": self.zero_stage, "warnings": self.warnings}  # fmt: skip
        out["engine"] = dataclasses.asdict(self.engine) if self.engine else None
        out["compute"] = dataclasses.asdict(self.compute) if self.compute else None
        if self.memory:
            out["memory"] = {**dataclasses.asdict(self.memory), "total": self.memory.total, "fits": self.memory.fits}
            out["advice"] = self.advice
        out["objects"] = self.objects
        return out


def effective_zero_stage(spec: CPTRunSpec, parameters: int, gpu_memory_gib: float) -> int:
    """The ZeRO stage the trainer will use: its `auto` rule takes plain PyTorch (stage 0) when the
    16 bytes/parameter training state fits in half of one GPU."""
    mode = spec.deepspeed.mode
    if mode == "never" or (mode == "auto" and 16 * parameters <= 0.5 * gpu_memory_gib * 2**30):
        return 0
    return spec.deepspeed.zero_stage


def memory_for(spec: CPTRunSpec, shape: ModelShape, gpu_memory_gib: float) -> tuple[int, MemoryFit]:
    """The effective ZeRO stage and the memory estimate of `spec` on GPUs of `gpu_memory_gib`."""
    zero = effective_zero_stage(spec, shape.parameters, gpu_memory_gib)
    r, t, d = spec.resources, spec.training, spec.deepspeed
    memory = estimate_memory(
        shape, r.nodes * r.gpus_per_node, zero, d.offload_optimizer, d.offload_parameters, t.micro_batch_size,
        t.sequence_length, t.gradient_checkpointing, t.precision, gpu_memory_gib, nodes=r.nodes,
    )  # fmt: skip
    return zero, memory


MAX_SUGGESTED_NODES = 1024


def _changed(spec: CPTRunSpec, **sections: dict[str, Any]) -> CPTRunSpec | None:
    """`spec` with fields of its sections replaced, re-validated; None when the change is invalid."""
    data = spec.model_dump()
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    try:
        return CPTRunSpec.model_validate(data)
    except Exception:  # noqa: BLE001  (an invalid combination is simply not suggested)
        return None


def fit_advice(spec: CPTRunSpec, shape: ModelShape, gpu_memory_gib: float, pool_gpus_per_node: int) -> list[str]:
    """Changes that would make the run fit, each checked by re-running the estimate with it.

    Single changes first (a higher ZeRO stage, optimizer/parameter offload, gradient
    checkpointing, the largest smaller microBatchSize, all the pool's GPUs per node, the fewest
    nodes up to MAX_SUGGESTED_NODES); when none fits alone, gradient checkpointing together with
    each change that lowers the model states (and, if still needed, the largest microBatchSize
    that fits then). An empty list when nothing tried fits."""
    d, t, r = spec.deepspeed, spec.training, spec.resources
    current = effective_zero_stage(spec, shape.parameters, gpu_memory_gib)

    def fit(changes: dict[str, dict[str, Any]]) -> MemoryFit | None:
        candidate = _changed(spec, **changes)
        if candidate is None:
            return None
        memory = memory_for(candidate, shape, gpu_memory_gib)[1]
        return memory if memory.fits else None

    def merged(*parts: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for part in parts:
            for section, values in part.items():
                out.setdefault(section, {}).update(values)
        return out

    def smallest_fitting(base: dict[str, dict[str, Any]], section: str, key: str, values: list[int]):
        """The first of `values` (in order of preference) that fits together with `base`."""
        for value in values:
            m = fit(merged(base, {section: {key: value}}))
            if m:
                return value, m
        return None

    def fewest_nodes(base: dict[str, dict[str, Any]]):
        nodes = r.nodes * 2
        while nodes <= MAX_SUGGESTED_NODES:
            m = fit(merged(base, {"resources": {"nodes": nodes}}))
            if m:
                low = nodes // 2 + 1
                while low < nodes:
                    mid = (low + nodes) // 2
                    mm = fit(merged(base, {"resources": {"nodes": mid}}))
                    if mm:
                        nodes, m = mid, mm
                    else:
                        low = mid + 1
                return nodes, m
            nodes *= 2
        return None

    # model-state changes: (words, changes)
    state_changes: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for stage in range(current + 1, 4):
        ds: dict[str, Any] = {"zero_stage": stage}
        words = f"raise deepspeed.zeroStage to {stage}"
        if d.mode == "never" or stage == 0:
            ds["mode"] = "always"
            words = f"set deepspeed.mode: always and deepspeed.zeroStage: {stage}"
        state_changes.append((words, {"deepspeed": ds}))
    if current >= 1 and not d.offload_optimizer:
        state_changes.append(("set deepspeed.offloadOptimizer: true", {"deepspeed": {"offload_optimizer": True}}))
    if current >= 3 and not d.offload_parameters:
        state_changes.append((
            "set deepspeed.offloadOptimizer and deepspeed.offloadParameters: true",
            {"deepspeed": {"offload_optimizer": True, "offload_parameters": True}},
        ))  # fmt: skip
    if r.gpus_per_node < pool_gpus_per_node:
        state_changes.append((f"use all {pool_gpus_per_node} GPUs per node (resources.gpusPerNode)", {"resources": {"gpus_per_node": pool_gpus_per_node}}))
    micro_sizes = list(range(t.micro_batch_size - 1, 0, -1))

    def with_nodes_and_micro(words: str, base: dict[str, dict[str, Any]]) -> str | None:
        m = fit(base)
        if m:
            return f"{words} (estimate {m.total / GIB:.1f} GiB per GPU)"
        found = smallest_fitting(base, "training", "micro_batch_size", micro_sizes)
        if found:
            return f"{words} and lower training.microBatchSize to {found[0]} (estimate {found[1].total / GIB:.1f} GiB per GPU)"
        return None

    out: list[str] = []
    for words, changes in state_changes:
        m = fit(changes)
        if m:
            out.append(f"{words} (estimate {m.total / GIB:.1f} GiB per GPU)")
    out = _first_stage_only(out)
    if not t.gradient_checkpointing:
        m = fit({"training": {"gradient_checkpointing": True}})
        if m:
            out.append(f"set training.gradientCheckpointing: true (estimate {m.total / GIB:.1f} GiB per GPU)")
    found = smallest_fitting({}, "training", "micro_batch_size", micro_sizes)
    if found:
        out.append(f"lower training.microBatchSize to {found[0]} (estimate {found[1].total / GIB:.1f} GiB per GPU)")
    nodes = fewest_nodes({})
    if nodes:
        out.append(f"use {nodes[0]} nodes ({nodes[0] * r.gpus_per_node} GPUs; resources.nodes) (estimate {nodes[1].total / GIB:.1f} GiB per GPU)")
    if out:
        return out
    # nothing alone: lower the activations (checkpointing, then a smaller micro-batch) and the model states together
    act: dict[str, dict[str, Any]] = {"training": {"gradient_checkpointing": True}} if not t.gradient_checkpointing else {}
    act_words = "set training.gradientCheckpointing: true and " if act else ""
    for words, changes in state_changes:
        line = with_nodes_and_micro(act_words + words.replace("set ", "", 1) if act else words, merged(act, changes))
        if line:
            out.append(line)
    out = _first_stage_only(out)
    nodes = fewest_nodes(act)
    if nodes:
        out.append(f"{act_words}use {nodes[0]} nodes ({nodes[0] * r.gpus_per_node} GPUs; resources.nodes) (estimate {nodes[1].total / GIB:.1f} GiB per GPU)")
    if not out and act:
        line = with_nodes_and_micro("set training.gradientCheckpointing: true", act)
        if line:
            out.append(line)
    return out


def _first_stage_only(lines: list[str]) -> list[str]:
    """Of several 'zeroStage to k' suggestions, only the lowest stage (the first)."""
    out, seen = [], False
    for line in lines:
        if "zeroStage" in line:
            if seen:
                continue
            seen = True
        out.append(line)
    return out


def misfit_message(plan: RunPlan) -> str:
    """The one stderr line for a run that does not fit: what would fit, each checked."""
    m = plan.memory
    assert m is not None
    head = (
        f"CPTRun {plan.run.namespace}/{plan.run.name} does not fit: needs {m.total / 2**30:.1f} GiB per GPU, "
        f"the pool's GPUs have {m.gpu_memory_bytes / 2**30:.0f} GiB; "
    )
    if not plan.advice:
        return head + "none of zeroStage, offload, gradient checkpointing, a smaller microBatchSize or more nodes fits alone or together"
    return head + "each of these would fit: " + "; ".join(plan.advice)


def _pool_problems(run: Resource, settings: OperatorSettings) -> list[str]:
    """What the operator would refuse of a run's scheduling: the checks it runs (decide/checks)."""
    from cpt_operator.decide.checks import (
        check_grace_period, check_image, check_local_paths, check_pool, check_scheduling, run_local_locations,
    )  # fmt: skip

    spec: CPTRunSpec = run.spec  # type: ignore[assignment]
    pool, refusal = check_pool(spec, run.namespace, settings)
    refusals = [refusal, check_image(spec, settings), check_scheduling(spec, pool) if pool is not None else None,
                check_local_paths(run_local_locations(spec), settings), check_grace_period(spec, settings)]
    return [f"CPTRun {run.namespace}/{run.name}: {r.message}" for r in refusals if r is not None]


def _curation_problems(corpus: Resource, settings: OperatorSettings) -> list[str]:
    from cpt_operator.decide.checks import check_curation

    _, refusal = check_curation(corpus.spec, corpus.namespace, settings)  # type: ignore[arg-type]
    return [f"Corpus {corpus.namespace}/{corpus.name}: {refusal.message}"] if refusal is not None else []


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


def benchmark_problems(run: Resource, pvc_root: str) -> list[str]:
    """lmEvalHarness task files that are visible here (local paths, PVC folders under an existing
    `pvc_root` as in local mode) and cannot be used: missing, unreadable, or rows off the schema.
    S3 task files and PVCs of a cluster are checked by the trainer before the model loads."""
    spec: CPTRunSpec = run.spec  # type: ignore[assignment]
    problems = []
    for g in spec.evaluation.general_evals:
        loc = g.task_file
        if g.kind != "lmEvalHarness" or loc is None:
            continue
        if loc.local is not None:
            path = Path(loc.local.path)
        elif loc.pvc is not None and Path(pvc_root).is_dir():
            path = Path(pvc_root) / loc.pvc.claim_name / loc.pvc.path
        else:
            continue
        try:
            read_task_file(path, f"spec.evaluation.generalEvals {g.name}", g.limit)
        except TaskFileError as exc:
            problems.append(f"CPTRun {run.namespace}/{run.name}: {exc}")
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
        problems += _pool_problems(run, settings) + benchmark_problems(run, settings.pvc_mount_root)
    for corpus in (r for r in resources if r.kind == "Corpus"):
        problems += _curation_problems(corpus, settings)
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
        advice: list[str] = []
        compute = memory = None
        zero = None
        if shape is None:
            notes.append("no compute or memory estimate: set spec.baseModel.parameters (or use a local model with config.json)")
        else:
            compute = estimate_compute(
                shape.parameters, spec.training.total_tokens, gpus, settings.achieved_tflops_per_gpu, settings.price_per_gpu_hour
            )
            zero, memory = memory_for(spec, shape, pool.gpu_memory_gib)
            if not memory.fits:
                advice = fit_advice(spec, shape, pool.gpu_memory_gib, pool.gpus_per_node)
        steps = total_steps(spec)
        policy = next(
            (r.spec for r in resources if r.kind == "CheckpointPolicy" and r.namespace == run.namespace and r.name == spec.checkpoint_policy_ref.name),
            None,
        )
        warnings = run_warnings(spec, steps, policy)  # type: ignore[arg-type]
        engine = engine_choice(spec, shape.parameters if shape else None, pool.gpu_memory_gib)
        plans.append(RunPlan(run, steps, shape, compute, memory, _objects(run, rendered), notes, zero, warnings, advice, engine))
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
    if plan.engine:
        lines.append(f"  engine        {plan.engine.describe()}")
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
        # the trainer's choice (auto with zeroStage 0 on a model too big for the plain path is DeepSpeed ZeRO-0)
        engine = "plain PyTorch" if plan.engine is not None and plan.engine.kind == "torch" else f"DeepSpeed ZeRO-{plan.zero_stage}"
        verdict = "fits" if m.fits else "DOES NOT FIT"
        lines += [
            f"  memory/GPU    {engine}: model states {_gib(m.model_states)} ({m.method}), "
            f"activations {_gib(m.activations)}, overhead {_gib(m.overhead)}",
            f"                total {_gib(m.total)} of {_gib(m.gpu_memory_bytes)}: {verdict}",
        ]
        if m.cpu_memory_per_node:
            lines.append(f"                CPU memory for model states {_gib(m.cpu_memory_per_node)} per node (DeepSpeed's estimate)")
        lines += [f"                note: {n}" for n in m.notes]
        if not m.fits:
            lines += [f"                would fit: {a}" for a in plan.advice] or ["                would fit: nothing tried fits"]
    lines += [f"  note          {n}" for n in plan.notes]
    lines += [f"  warning       {w}" for w in plan.warnings]
    if show_objects and plan.objects:
        lines.append("  objects the operator would create:")
        body = yaml.safe_dump_all(plan.objects, sort_keys=False, width=120)
        lines += ["    " + line for line in body.splitlines()]
    return "\n".join(lines)
