"""`cpt plan`: the compute estimate matches a hand calculation, the memory-fit check, the
objects shown, and bad input as one clear line with exit code 2 (the real CLI, in a subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from api_helpers import cpt, write_legal

from cpt_operator.api.resources import load_manifests
from cpt_operator.plan import ModelShape, estimate_compute, estimate_memory, llama_parameters
from cpt_operator.plan_report import PlanError, build_plans
from cpt_operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
LEGAL = REPO / "examples" / "legal-cpt"


def test_hand_calculation_8b_params_50b_tokens(tmp_path):
    folder = write_legal(tmp_path, {"baseModel": {"parameters": 8_000_000_000}, "training": {"totalTokens": 50_000_000_000}})
    result = cpt("plan", str(folder), "--output", "json", "--tflops", "400", "--price", "2")
    assert result.returncode == 0, result.stderr
    (plan,) = json.loads(result.stdout)
    # 6 x 8e9 x 50e9 = 2.4e21 FLOPs; / (400e12 FLOP/s x 3600 s/h) = 1666.67 GPU-hours; x 2 = 3333.33
    assert plan["compute"]["flops"] == pytest.approx(2.4e21, rel=1e-12)
    assert plan["compute"]["gpu_hours"] == pytest.approx(2.4e21 / (400e12 * 3600), rel=1e-12)
    assert plan["compute"]["gpu_hours"] == pytest.approx(1666.667, rel=1e-6)
    assert plan["compute"]["cost"] == pytest.approx(3333.333, rel=1e-6)
    assert plan["compute"]["wall_hours"] == pytest.approx(1666.667 / 16, rel=1e-6)


def test_8b_zero0_on_80gb_does_not_fit_and_zero3_on_16_gpus_fits(tmp_path):
    base = {"baseModel": {"parameters": 8_000_000_000}}
    zero0 = write_legal(tmp_path, {**base, "deepspeed": {"zeroStage": 0}}, "zero0")
    result = cpt("plan", str(zero0), "--no-objects")
    assert result.returncode == 1
    assert "DOES NOT FIT" in result.stdout
    assert "does not fit" in result.stderr and "zeroStage" in result.stderr
    zero3 = write_legal(tmp_path, {**base, "deepspeed": {"zeroStage": 3}}, "zero3")
    result = cpt("plan", str(zero3), "--no-objects")
    assert result.returncode == 0, result.stderr
    assert ": fits" in result.stdout


def test_memory_accounting_by_zero_stage():
    # model states as DeepSpeed's estimators count them (compared with DeepSpeed in test_api_plan_memory.py)
    n = 8_000_000_000
    shape = ModelShape(parameters=n, hidden_size=4096)
    kwargs = dict(gpus=16, offload_optimizer=False, offload_parameters=False, micro_batch_size=1, sequence_length=2048,
                  gradient_checkpointing=False, precision="bf16", gpu_memory_gib=80, nodes=2)  # fmt: skip
    z0, z1, z2, z3 = (estimate_memory(shape, zero_stage=z, **kwargs) for z in range(4))
    assert z0.model_states == 16 * n  # plain PyTorch: fp32 weights, gradients, Adam m and v
    assert z2.model_states == 2 * n + int(18 * n / 16)
    assert z1.model_states == z2.model_states + int(2 * n * (1 - 1 / 16))  # stage 1 keeps whole 16-bit gradients
    assert z3.model_states == 4 * 128_256 * 4096 + int(18 * n / 16)
    assert z0.activations is None and not z0.fits and z3.fits
    offloaded = estimate_memory(shape, zero_stage=3, **{**kwargs, "offload_optimizer": True})
    assert offloaded.model_states == 4 * 128_256 * 4096 + int(2 * n / 16) and offloaded.total < z3.total


def test_compute_estimate_function():
    est = estimate_compute(1_000_000_000, 1_000_000_000, gpus=8, achieved_tflops_per_gpu=500, price_per_gpu_hour=3)
    assert est.flops == 6e18
    assert est.gpu_hours == pytest.approx(6e18 / (500e12 * 3600))


def test_llama_parameter_count_from_config():
    # TinyLlama-1.1B's published shape has 1,100,048,384 parameters.
    cfg = {"hidden_size": 2048, "num_hidden_layers": 22, "vocab_size": 32000, "intermediate_size": 5632,
           "num_attention_heads": 32, "num_key_value_heads": 4, "tie_word_embeddings": False}  # fmt: skip
    assert llama_parameters(cfg) == 1_100_048_384


def test_plan_reads_n_from_a_local_model_config(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 1000, "intermediate_size": 176, "num_attention_heads": 4}
    (model / "config.json").write_text(json.dumps(cfg))
    folder = write_legal(tmp_path, {"baseModel": {"location": {"local": {"path": str(model)}}, "parameters": 1}})
    # the location was merged, so drop the s3 source the example had
    for path in folder.glob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            if doc["kind"] == "CPTRun":
                doc["spec"]["baseModel"]["location"].pop("s3")
        path.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(PlanError, match="allowedLocalRoots"):  # a cluster names the folders local paths may use
        build_plans(load_manifests([folder]), OperatorSettings())
    (plan,) = build_plans(load_manifests([folder]), OperatorSettings(allowed_local_roots=[str(tmp_path)]))
    assert plan.shape.parameters == llama_parameters(cfg)
    assert plan.shape.source.endswith("config.json")


def test_plan_shows_the_objects_the_operator_would_create():
    (plan,) = build_plans(load_manifests([LEGAL]), OperatorSettings())
    kinds = sorted(o["kind"] for o in plan.objects)
    assert kinds == ["ConfigMap", "ConfigMap", "ConfigMap", "Job", "Job", "PyTorchJob"]
    configmaps = json.dumps([o["data"] for o in plan.objects if o["kind"] == "ConfigMap"])
    assert "s3://legal-team-checkpoints/cpt/legal-team/llama3-8b-legal" in configmaps
    assert "AWS_SECRET_ACCESS_KEY" not in configmaps  # credentials reach pods only through secretKeyRef
    job = next(o for o in plan.objects if o["kind"] == "PyTorchJob")
    env = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in env if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]} == {"legal-team-s3"}


def test_unresolved_and_mistyped_references(tmp_path):
    resources = load_manifests([LEGAL])
    run = next(r for r in resources if r.kind == "CPTRun")
    without_policy = [r for r in resources if r.kind != "CheckpointPolicy"]
    with pytest.raises(PlanError, match=r"spec.checkpointPolicyRef.name names CheckpointPolicy 'legal-keep-best'"):
        build_plans(without_policy, OperatorSettings())
    other_ns = [r for r in resources if r.kind != "Corpus" or r.name != "legal-contracts"]
    moved = next(r for r in resources if r.name == "legal-contracts")
    moved.namespace = "other-team"
    with pytest.raises(PlanError, match=r"spec.corpora\[0\].name .* exists in namespace other-team"):
        build_plans(other_ns + [moved], OperatorSettings())
    assert run.spec.resources.node_pool == "h100-80gb"


def test_unknown_node_pool_is_reported():
    settings = OperatorSettings(node_pools=[{"name": "a100-40gb", "allowed_namespaces": ["*"]}])
    with pytest.raises(PlanError, match=r"spec.resources.nodePool 'h100-80gb' is not a node pool .*: a100-40gb"):
        build_plans(load_manifests([LEGAL]), settings)


@pytest.mark.parametrize(
    "content,expected",
    [
        ("kind: [unclosed\n", "malformed YAML (line"),
        ("apiVersion: cpt.dev/v1alpha1\nkind: CPTJob\nmetadata: {name: x}\nspec: {}\n", "unknown kind 'CPTJob'"),
        ("apiVersion: cpt.dev/v2\nkind: CPTRun\nmetadata: {name: x}\nspec: {}\n", "'cpt.dev/v2' is not served"),
        ("apiVersion: batch/v1\nkind: CPTRun\nmetadata: {name: x}\nspec: {}\n", "CPTRun belongs to cpt.dev/v1alpha1"),
        ("- just\n- a list\n", "a manifest must be a mapping"),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, content, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    result = cpt("plan", str(bad))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_file_is_one_clear_line_and_exit_2(tmp_path):
    result = cpt("plan", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"cpt plan: {tmp_path / 'nope.yaml'}: no such file or directory"


def test_invalid_field_through_the_cli_names_it(tmp_path):
    folder = write_legal(tmp_path, {"mixing": {"alpha": 3}})
    result = cpt("plan", str(folder))
    assert result.returncode == 2
    assert "spec.mixing.alpha: must be less than or equal to 1.0" in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_refuses_what_the_operator_refuses_a_priority_class_and_a_curation_beyond_limits():
    resources = load_manifests([LEGAL])
    run = next(r for r in resources if r.kind == "CPTRun")
    run.spec.resources.priority_class_name = "system-node-critical"
    corpus = next(r for r in resources if r.kind == "Corpus")
    corpus.spec.parallelism = 256
    with pytest.raises(PlanError) as err:
        build_plans(resources, OperatorSettings())
    text = str(err.value)
    assert "priorityClassName 'system-node-critical'" in text
    assert f"Corpus {corpus.namespace}/{corpus.name}" in text and "parallelism" in text


def _with_benchmark(tmp_path, task_path: Path) -> Path:
    return write_legal(tmp_path, {"evaluation": {"generalEvals": [
        {"name": "cloze", "kind": "lmEvalHarness", "taskFile": {"local": {"path": str(task_path)}}, "limit": 10},
    ]}}, name=f"bench-{task_path.name}")  # fmt: skip


def _allowing(tmp_path: Path) -> str:
    """Settings where the platform allows local paths below tmp_path (none are by default)."""
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"allowed_local_roots": [str(tmp_path)]}))
    return str(path)


def test_plan_refuses_a_benchmark_whose_task_file_is_missing_naming_the_eval(tmp_path):
    result = cpt("plan", str(_with_benchmark(tmp_path, tmp_path / "absent.jsonl")), "--no-objects", "--settings", _allowing(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "spec.evaluation.generalEvals cloze: task file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_plan_refuses_a_task_file_off_the_schema_and_accepts_a_good_one(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": "a"}) + "\n")
    result = cpt("plan", str(_with_benchmark(tmp_path, bad)), "--no-objects", "--settings", _allowing(tmp_path))
    assert result.returncode == 2
    assert "row 0" in result.stderr and "multiple_choice schema" in result.stderr
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2}) + "\n" for i in range(12)))
    result = cpt("plan", str(_with_benchmark(tmp_path, good)), "--no-objects", "--settings", _allowing(tmp_path))
    assert result.returncode == 0, result.stderr
    # Without the platform's leave, the same local path is refused (allowedLocalRoots).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = cpt("plan", str(_with_benchmark(elsewhere, good)), "--no-objects")
    assert result.returncode == 2 and "allowedLocalRoots" in result.stderr
