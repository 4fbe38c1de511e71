"""status.checkpoints stays bounded for the longest run the API allows: a 1,000,000-step run
saving at every step (saveInterval 1, the smallest), with the longest names and prefixes the
schema admits, through the real `control_step` over many passes. The whole CPTRun stays under
256 KiB, the records under the CRD's maxItems, and nothing the policy keeps is deleted or
missing from the status (at 1,001 records every status patch used to be refused: status froze
and a decided halt was never applied while deletions went on)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.resources import load_manifests
from cpt_operator.control.checkpoint_records import MAX_DELETED_RECORDS, MAX_RECORDS, policy_reasons
from cpt_operator.control.prometheus import RunMetrics
from cpt_operator.control.run_control import ControlInputs, control_step, retention_policy
from cpt_operator.control.storage import StoredCheckpoint, confined_step, step_dir_name
from cpt_operator.decide.retention import EvaluatedCheckpoint, select_checkpoints_to_keep
from cpt_trainer.contract import metrics as names

REPO = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 1_000_000
NS = "n" * 63  # DNS-1123 labels of the most characters
RUN = "r" * 63
UID = "0e5a1b2c-3d4e-4f5a-8b6c-7d8e9f0a1b2c"
OBJECT_LIMIT = 256 * 1024


def longest_s3_uri() -> str:
    uri = "s3://" + "b" * 63  # the longest bucket
    while len(uri) + 6 <= 1024:  # the schema's maxLength
        uri += "/ppppp"
    return uri


PREFIX = f"{longest_s3_uri()}/{NS}/{RUN}/{UID}"  # <storage>/<namespace>/<run>, and a uid segment to spare


def crd_max_items() -> int:
    crd = yaml.safe_load((REPO / "crds" / "cpt.dev_cptruns.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["status"]["properties"]["checkpoints"]["maxItems"]


class MemoryStore:
    """A run's checkpoints in memory, deleted at once (as S3), deletions confined to its prefix."""

    deletes_later = False

    def __init__(self) -> None:
        self.prefix = PREFIX
        self.checkpoints: dict[int, dict[str, Any]] = {}

    def list_complete(self) -> list[StoredCheckpoint]:
        return [StoredCheckpoint(s, f"{PREFIX}/{step_dir_name(s)}") for s in sorted(self.checkpoints)]

    def read_metrics(self, step: int) -> dict[str, Any] | None:
        return self.checkpoints.get(step)

    def delete(self, uri: str) -> None:
        del self.checkpoints[confined_step(PREFIX, uri)]

    def delete_run(self) -> int:
        raise NotImplementedError


def run_and_policy(keep_last_n: int, keep_best_k: int, milestone_interval: int):
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "legal-cpt"])}
    spec = res["CPTRun"].spec
    per_step = spec.training.global_batch_size * spec.training.sequence_length
    spec = spec.model_copy(update={
        "training": spec.training.model_copy(update={"total_tokens": TOTAL_STEPS * per_step}),
        "checkpoint_policy_ref": spec.checkpoint_policy_ref.model_copy(update={"name": "p" * 63}),
    })  # fmt: skip
    policy = CheckpointPolicySpec.model_validate({
        "saveInterval": 1, "keepLastN": keep_last_n, "keepBestK": keep_best_k, "milestoneInterval": milestone_interval,
        "storage": {"s3": {"uri": longest_s3_uri(), "endpoint": "https://" + "e" * 500, "region": "r" * 64,
                           "credentialsSecret": {"name": "s" * 63}}},
    })  # fmt: skip
    return spec, policy


def whole_object(spec, status: dict[str, Any]) -> dict[str, Any]:
    """The CPTRun as the API server stores it, with Kopf's copy of the spec in an annotation."""
    wire = spec.to_wire()
    return {
        "apiVersion": "cpt.dev/v1alpha1", "kind": "CPTRun",
        "metadata": {"name": RUN, "namespace": NS, "uid": UID, "resourceVersion": "9999999999", "generation": 99,
                     "creationTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["cpt.dev/checkpoints"],
                     "annotations": {"kopf.zalando.org/last-handled-configuration": json.dumps({"spec": wire})}},
        "spec": wire, "status": status,
    }  # fmt: skip


def merge(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(status)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def policy_keeps(store: MemoryStore, spec, policy) -> set[int]:
    """What the policy keeps of everything stored, computed apart from the pass."""
    ckpts = [EvaluatedCheckpoint(s, "", m["domain_perplexity"], max(m["general_scores"].values()), m["general_regression"])
             for s, m in store.checkpoints.items()]  # fmt: skip
    decision = select_checkpoints_to_keep(ckpts, retention_policy(policy), spec.evaluation.forgetting_threshold, 30.0)
    return set(decision.keep)


def simulate(spec, policy, per_pass: int, windows: list[int], passes_per_window: int, check_kept_in_status: bool = True):
    """Passes 30 s apart; between two passes the trainer saves `per_pass` checkpoints, one per
    step. The run is simulated in windows of dense passes starting at `windows` (every 100,000
    steps up to 1,000,000, so every milestone falls in one): the steps between two windows are
    never written, which leaves the status as a dense run's steady state would (kept, waiting,
    the deleted history), with the milestones of the whole run and step numbers up to 1,000,000."""
    rng = random.Random(7)
    store = MemoryStore()
    status: dict[str, Any] = {"phase": "Running"}
    now = 1.8e9
    max_items, biggest = crd_max_items(), 0
    for start in windows:
        step = start
        for _ in range(passes_per_window):
            for _ in range(per_pass):
                step += 1
                store.checkpoints[step] = {"step": step, "domain_perplexity": rng.uniform(5.0, 30.0),
                                           "general_scores": {"general-ppl": rng.uniform(9.0, 11.0)},
                                           "general_regression": rng.uniform(-0.01, 0.05), "baseline_domain_perplexity": 30.0}  # fmt: skip
            kept = policy_keeps(store, spec, policy)
            m = RunMetrics(newest_timestamp=now, values={
                names.STEP.name: step, names.TOKENS_SEEN.name: step * 2_097_152, names.TOKENS_PER_SECOND.name: 5e5,
                names.EVAL_STEP.name: step, names.GENERAL_REGRESSION.name: 0.01, names.DOMAIN_PERPLEXITY.name: 20.0,
            })  # fmt: skip
            out = control_step(ControlInputs(NS, RUN, 1, spec, policy, status, m, None, store, now))
            status = merge(status, out.status_patch)
            now += 30
            records = status["checkpoints"]
            assert len(records) <= max_items == MAX_RECORDS
            size = len(json.dumps(whole_object(spec, status), separators=(",", ":")))
            assert size < OBJECT_LIMIT, f"the CPTRun is {size:,} bytes at step {step}"
            biggest = max(biggest, size)
            # Never a kept checkpoint deleted; the newest and the best always recorded.
            assert not {confined_step(PREFIX, u) for u in out.deleted} & kept
            assert kept <= set(store.checkpoints)
            assert step in {int(r["step"]) for r in records}
            assert status["bestCheckpoint"]["step"] in {int(r["step"]) for r in records}
            if check_kept_in_status:  # nothing the policy keeps is missing from the status
                assert {int(r["step"]) for r in records if policy_reasons(r)} == kept
            assert len([r for r in records if r["deleted"]]) <= MAX_DELETED_RECORDS
    return store, status, biggest


WINDOWS = [0, *range(100_000 - 4_000, TOTAL_STEPS, 100_000)]  # the last window ends at step 1,000,000


@pytest.mark.parametrize(
    ("keep_last_n", "keep_best_k", "milestone_interval", "per_pass"),
    [(2, 1, 0, 100), (2, 2, 100_000, 100), (20, 10, 100_000, 40)],
    ids=["default-policy", "milestones", "keeps-forty"],
)
def test_a_million_step_run_saving_every_step_keeps_its_status_bounded(keep_last_n, keep_best_k, milestone_interval, per_pass):
    spec, policy = run_and_policy(keep_last_n, keep_best_k, milestone_interval)
    store, status, biggest = simulate(spec, policy, per_pass, WINDOWS, 4_000 // per_pass)
    assert status["progress"]["step"] == TOTAL_STEPS
    assert biggest < OBJECT_LIMIT
    # Rotation kept up: what is stored is what the policy keeps plus the last pass's arrivals.
    kept = policy_keeps(store, spec, policy)
    assert set(store.checkpoints) - kept <= set(range(TOTAL_STEPS - per_pass + 1, TOTAL_STEPS + 1))
    if milestone_interval:
        assert set(range(milestone_interval, TOTAL_STEPS + 1, milestone_interval)) <= kept <= set(store.checkpoints)


def test_a_policy_keeping_more_than_the_status_holds_keeps_them_all_and_bounds_the_status():
    """keepLastN 1000 and keepBestK 1000 (the schema's largest): about 110 records of the longest
    URIs fit. The status lists the best, then the newest kept ones; none of the others is deleted."""
    spec, policy = run_and_policy(1000, 1000, 0)
    store, status, biggest = simulate(spec, policy, 200, [0, TOTAL_STEPS - 2_000], 10, check_kept_in_status=False)
    assert biggest < OBJECT_LIMIT
    kept = policy_keeps(store, spec, policy)
    assert len(kept) > len(status["checkpoints"])  # more than fits, all still stored
    assert kept <= set(store.checkpoints)
    assert all(policy_reasons(r) for r in status["checkpoints"])
