"""Argo CD health checks and actions, executed by a real Lua 5.1 (Argo CD's gopher-lua is 5.1)
in a sandbox like Argo CD's default one: base and table libraries only, no string/math/os/io,
numbers as doubles (Argo CD decodes JSON numbers to float64)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lupa.lua51 as lua51
import pytest
import yaml

from chart_support import CHART_DIR, load_sync_module

LUA_DIR = CHART_DIR / "argocd" / "cpt.dev"
CRDS = {p.stem.split("_", 1)[1]: yaml.safe_load(p.read_text(encoding="utf-8")) for p in (CHART_DIR / "crds").glob("cpt.dev_*.yaml")}


def to_lua_value(lua: Any, value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return lua.table_from([to_lua_value(lua, v) for v in value])
    if isinstance(value, dict):
        return lua.table_from({k: to_lua_value(lua, v) for k, v in value.items()})
    raise TypeError(value)


def from_lua_value(value: Any) -> Any:
    if lupa_type(value) != "table":
        return value
    keys = list(value.keys())
    if keys and all(isinstance(k, (int, float)) for k in keys):
        return [from_lua_value(value[k]) for k in sorted(keys)]
    return {k: from_lua_value(value[k]) for k in keys}


def lupa_type(value: Any) -> str:
    return lua51.lua_type(value) or type(value).__name__


def run_lua(script_path: Path, obj: dict[str, Any]) -> Any:
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False)
    # Argo CD's VM opens only base, table and package (plus a safe `os` via require).
    lua.execute(
        "debug.setmetatable('', nil)\n"
        "string, math, io, os, debug, coroutine, require, dofile, loadfile, load, loadstring, module, package"
        " = nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil"
    )
    lua.globals()["obj"] = to_lua_value(lua, obj)
    function = lua.execute("return function() " + script_path.read_text(encoding="utf-8") + "\nend")
    return from_lua_value(function())


def health(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return run_lua(LUA_DIR / kind / "health.lua", obj)


def assert_status_fits_crd(kind_plural: str, status: dict[str, Any]) -> None:
    """Every key of a test status object is a property of the CRD's status schema (no typos)."""
    schema = CRDS[kind_plural]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        if isinstance(value, dict):
            props = node.get("properties")
            if props is None:
                assert node.get("additionalProperties") or node.get("x-kubernetes-preserve-unknown-fields"), path
                return
            for k, v in value.items():
                assert k in props, f"{path}.{k} is not in the {kind_plural} CRD"
                walk(v, props[k], f"{path}.{k}")
        elif isinstance(value, list):
            for v in value:
                walk(v, node["items"], path + "[]")

    walk(status, schema, "status")


def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": "2026-12-01T10:00:00Z", "observedGeneration": 3}


def run_obj(status: dict[str, Any] | None, generation: int = 3, suspend: bool | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "cpt.dev/v1alpha1", "kind": "CPTRun", "metadata": {"name": "legal", "namespace": "team-a", "generation": generation}, "spec": {}}
    if suspend is not None:
        obj["spec"]["suspend"] = suspend
    if status is not None:
        assert_status_fits_crd("cptruns", status)
        obj["status"] = status
    return obj


BEST = {"step": 1500, "uri": "s3://ckpts/team-a/legal/step-1500", "metric": "composite", "value": 0.12}
CPTRUN_CASES = {
    "Pending": ({"phase": "Pending", "observedGeneration": 3, "conditions": [cond("Ready", "False", "UnknownNodePool", "node pool 'a100' is not offered to namespace team-a")]},
                "Progressing", "Pending: node pool 'a100' is not offered to namespace team-a"),
    "WaitingForCorpus": ({"phase": "WaitingForCorpus", "observedGeneration": 3, "conditions": [cond("Ready", "False", "CorpusNotReady", "Corpus 'contracts' is Curating")]},
                         "Progressing", "Waiting for its corpora to be Ready: Corpus 'contracts' is Curating"),
    "Starting": ({"phase": "Starting", "observedGeneration": 3, "pytorchJobName": "legal-train"}, "Progressing", "Starting the training job: legal-train"),
    "Running": ({"phase": "Running", "observedGeneration": 3, "progress": {"step": 1200, "totalSteps": 10000, "percent": 12.0}},
                "Progressing", "Running: step 1200/10000 (12%)"),
    "Restarting": ({"phase": "Restarting", "observedGeneration": 3, "conditions": [cond("Ready", "False", "TrainerRestarting", "worker-1 exited 137 (OOMKilled); restart 2 of 3")]},
                   "Progressing", "Restarting from the newest checkpoint: worker-1 exited 137 (OOMKilled); restart 2 of 3"),
    "Suspended": ({"phase": "Suspended", "observedGeneration": 3, "progress": {"step": 400, "totalSteps": 10000, "percent": 4.0}},
                  "Suspended", "Suspended (spec.suspend); resumes from the newest checkpoint: step 400/10000 (4%)"),
    "Halted": ({"phase": "Halted", "observedGeneration": 3, "halt": {"step": 2000, "regression": 0.0412, "threshold": 0.03, "action": "Halt"}, "bestCheckpoint": BEST},
               "Suspended", "Halted: general regression 4.1% over threshold 3% at step 2000; best checkpoint step 1500 at s3://ckpts/team-a/legal/step-1500"),
    "Succeeded": ({"phase": "Succeeded", "observedGeneration": 3, "bestCheckpoint": BEST, "conditions": [cond("Ready", "True", "Succeeded", "done")]},
                  "Healthy", "Succeeded; best checkpoint step 1500 at s3://ckpts/team-a/legal/step-1500"),
    "Failed": ({"phase": "Failed", "observedGeneration": 3, "conditions": [cond("Ready", "False", "BackoffLimitExceeded", "PyTorchJob failed 4 times: NCCL timeout")]},
               "Degraded", "Failed: PyTorchJob failed 4 times: NCCL timeout"),
}


def test_every_cptrun_phase_has_a_case() -> None:
    phases = CRDS["cptruns"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]["enum"]
    assert set(CPTRUN_CASES) == set(phases)


@pytest.mark.parametrize("phase", CPTRUN_CASES)
def test_cptrun_health_per_phase(phase: str) -> None:
    status, expected, message = CPTRUN_CASES[phase]
    assert health("CPTRun", run_obj(status)) == {"status": expected, "message": message}


def test_cptrun_progressing_until_the_operator_observes_it() -> None:
    assert health("CPTRun", run_obj(None)) == {"status": "Progressing", "message": "Waiting for the operator to pick up the run"}
    lagging = run_obj({"phase": "Succeeded", "observedGeneration": 2, "bestCheckpoint": BEST}, generation=3)
    assert health("CPTRun", lagging) == {"status": "Progressing", "message": "Waiting for the operator to observe generation 3"}


def test_cptrun_halted_without_details_and_unknown_phase() -> None:
    assert health("CPTRun", run_obj({"phase": "Halted", "observedGeneration": 3})) == {
        "status": "Suspended", "message": "Halted: forgetting threshold exceeded; no eligible checkpoint"}
    obj = run_obj({"observedGeneration": 3})
    obj["status"]["phase"] = "Exploded"
    assert health("CPTRun", obj)["status"] == "Unknown"


def corpus_obj(status: dict[str, Any] | None, generation: int = 2) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "cpt.dev/v1alpha1", "kind": "Corpus", "metadata": {"name": "contracts", "namespace": "team-a", "generation": generation}, "spec": {}}
    if status is not None:
        assert_status_fits_crd("corpora", status)
        obj["status"] = status
    return obj


CORPUS_CASES = {
    "Pending": ({"phase": "Pending", "observedGeneration": 2, "conditions": [cond("Ready", "False", "SecretMissing", "Secret 's3-creds' not found")]},
                "Progressing", "Pending: Secret 's3-creds' not found"),
    "Curating": ({"phase": "Curating", "observedGeneration": 2, "jobName": "contracts-curate"}, "Progressing", "Curating (Job contracts-curate)"),
    "Ready": ({"phase": "Ready", "observedGeneration": 2, "documents": 48213, "tokens": 91000000, "shards": 12}, "Healthy", "Ready: 48213 documents, 91000000 tokens, 12 shards"),
    "Failed": ({"phase": "Failed", "observedGeneration": 2, "conditions": [cond("Ready", "False", "CurationFailed", "tokenizer not found at pvc team-data/models/base")]},
               "Degraded", "Curation failed: tokenizer not found at pvc team-data/models/base"),
}


def test_every_corpus_phase_has_a_case() -> None:
    phases = CRDS["corpora"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]["enum"]
    assert set(CORPUS_CASES) == set(phases)


@pytest.mark.parametrize("phase", CORPUS_CASES)
def test_corpus_health_per_phase(phase: str) -> None:
    status, expected, message = CORPUS_CASES[phase]
    assert health("Corpus", corpus_obj(status)) == {"status": expected, "message": message}


def test_corpus_progressing_until_observed() -> None:
    assert health("Corpus", corpus_obj(None))["status"] == "Progressing"
    assert health("Corpus", corpus_obj({"phase": "Ready", "observedGeneration": 1}, generation=2)) == {
        "status": "Progressing", "message": "Waiting for the operator to observe generation 2"}


def policy_obj(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "cpt.dev/v1alpha1", "kind": "CheckpointPolicy", "metadata": {"name": "default", "namespace": "team-a", "generation": generation}, "spec": {}}
    if status is not None:
        assert_status_fits_crd("checkpointpolicies", status)
        obj["status"] = status
    return obj


@pytest.mark.parametrize(
    "status, expected, message",
    [
        # The operator's RBAC has no checkpointpolicies/status: a policy without status is fine.
        (None, "Healthy", "Accepted; checked when a run uses it"),
        ({"observedGeneration": 0}, "Progressing", "Waiting for the operator to observe generation 1"),
        ({"observedGeneration": 1, "conditions": [cond("Ready", "False", "SecretMissing", "Secret 'ckpt-s3' has no key AWS_ACCESS_KEY_ID")]},
         "Degraded", "Secret 'ckpt-s3' has no key AWS_ACCESS_KEY_ID"),
        ({"observedGeneration": 1, "conditions": [cond("Ready", "Unknown", "Validating", "")]}, "Progressing", "Being validated"),
        ({"observedGeneration": 1, "conditions": [cond("Ready", "True", "Valid", "ok")], "runs": 2}, "Healthy", "Used by 2 run(s)"),
        ({"observedGeneration": 1}, "Healthy", "Ready"),
    ],
)
def test_checkpointpolicy_health(status: dict[str, Any] | None, expected: str, message: str) -> None:
    assert health("CheckpointPolicy", policy_obj(status)) == {"status": expected, "message": message}


# --------------------------------------------------------------------------- actions

ACTIONS = LUA_DIR / "CPTRun" / "actions"


def enabled_actions(obj: dict[str, Any]) -> set[str]:
    actions = run_lua(ACTIONS / "discovery.lua", obj)
    assert set(actions) == {"halt", "resume"}
    return {name for name, a in actions.items() if not a["disabled"]}


@pytest.mark.parametrize(
    "phase, suspend, expected",
    [
        ("Running", False, {"halt"}),
        ("Pending", None, {"halt"}),
        ("Restarting", False, {"halt"}),
        ("Suspended", True, {"resume"}),
        ("Running", True, {"resume"}),  # suspend requested, not yet observed
        ("Halted", False, set()),  # the forgetting monitor halted it: change the spec instead
        ("Halted", True, {"resume"}),
        ("Succeeded", False, set()),
        ("Failed", True, set()),
    ],
)
def test_action_discovery(phase: str, suspend: bool | None, expected: set[str]) -> None:
    assert enabled_actions(run_obj({"phase": phase, "observedGeneration": 3}, suspend=suspend)) == expected


def test_halt_action_suspends_the_run() -> None:
    before = run_obj({"phase": "Running", "observedGeneration": 3}, suspend=False)
    before["spec"]["training"] = {"learningRate": 3e-5}
    after = run_lua(ACTIONS / "halt" / "action.lua", before)
    assert after["spec"]["suspend"] is True
    assert after["spec"]["training"] == {"learningRate": 3e-5}
    assert after["metadata"]["annotations"] == {"cpt.dev/suspended-by": "argocd-action"}
    assert after["metadata"]["name"] == "legal" and after["status"]["phase"] == "Running"


def test_resume_action_unsuspends_the_run() -> None:
    before = run_obj({"phase": "Suspended", "observedGeneration": 3}, suspend=True)
    before["metadata"]["annotations"] = {"cpt.dev/suspended-by": "argocd-action", "team": "legal"}
    after = run_lua(ACTIONS / "resume" / "action.lua", before)
    assert after["spec"]["suspend"] is False
    assert after["metadata"]["annotations"] == {"team": "legal"}


def test_sandbox_really_lacks_the_string_library(tmp_path: Path) -> None:
    # The health checks above would pass in a full Lua too; this proves the sandbox bites.
    probe = tmp_path / "probe.lua"
    probe.write_text('return string.format("%d", 1)', encoding="utf-8")
    with pytest.raises(lua51.LuaError, match="string"):
        run_lua(probe, {})
    probe.write_text('return ("x"):rep(2)', encoding="utf-8")
    with pytest.raises(lua51.LuaError):
        run_lua(probe, {})


def test_argocd_cm_patch_is_in_sync_with_the_lua_files() -> None:
    sync = load_sync_module()
    patch_file = CHART_DIR / "argocd" / "argocd-cm-patch.yaml"
    assert patch_file.read_text(encoding="utf-8") == sync.render_argocd_patch()
    data = yaml.safe_load(patch_file.read_text(encoding="utf-8"))["data"]
    assert set(data) == {
        "resource.customizations.health.cpt.dev_CPTRun",
        "resource.customizations.health.cpt.dev_Corpus",
        "resource.customizations.health.cpt.dev_CheckpointPolicy",
        "resource.customizations.actions.cpt.dev_CPTRun",
    }
    actions = yaml.safe_load(data["resource.customizations.actions.cpt.dev_CPTRun"])
    assert actions["discovery.lua"] == (ACTIONS / "discovery.lua").read_text(encoding="utf-8")
    assert {d["name"] for d in actions["definitions"]} == {"halt", "resume"}
