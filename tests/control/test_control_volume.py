"""PVC rotation end to end without a cluster: the real trainer exporter lists the volume's
checkpoints over HTTP, the operator's control pass decides from that listing alone, and the
trainer's own CheckpointManager applies the retain list the pass wrote, on real folders."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cpt_operator.api.resources import load_manifests
from cpt_operator.control.prometheus import scrape_run_metrics
from cpt_operator.control.run_control import CHECKPOINTS_ROTATED, ControlInputs, control_step
from cpt_operator.control.storage import VolumeCheckpointStore, step_dir_name
from cpt_trainer.contract.config import CheckpointConfig, RunIdentity, S3Settings
from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_METRICS_FILE
from cpt_trainer.train.checkpointing import CheckpointManager
from cpt_trainer.train.distributed import DistEnv
from cpt_trainer.train.metrics_exporter import TrainerMetrics

REPO = Path(__file__).resolve().parents[2]
NS, RUN = "legal-team", "llama3-8b-legal"
STEPS = list(range(500, 6001, 500))  # 12 checkpoints
BEST = {1500: 12.0, 2500: 12.5}  # lowest domain perplexity; the rest 20.0


@pytest.fixture(scope="module")
def legal():
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "legal-cpt"])}
    policy = res["CheckpointPolicy"].spec.model_copy(update={"best_metric": "domainPerplexity"})
    return res["CPTRun"].spec, policy  # keepLastN 2, keepBestK 2, milestones every 5000


def ckpt_metrics(step: int) -> dict:
    return {"step": step, "domain_perplexity": BEST.get(step, 20.0), "general_scores": {"general-ppl": 10.1},
            "general_regression": 0.01, "baseline_domain_perplexity": 30.0}  # fmt: skip


class Volume:
    """A run's checkpoint folder as the trainer pod sees it, its exporter and its manager."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "pvc" / "checkpoints" / NS / RUN
        self.root.mkdir(parents=True)
        self.retain_file = tmp_path / "retain" / "retain.json"  # the mounted ConfigMap key
        self.retain_file.parent.mkdir()
        cfg = CheckpointConfig(interval=500, uri=str(self.root), retain_file=str(self.retain_file))
        self.manager = CheckpointManager(cfg, S3Settings(), tmp_path / "cache", DistEnv(), total_steps=10_000)
        self.exporter = TrainerMetrics(RunIdentity(namespace=NS, name=RUN))
        self.port = self.exporter.serve(0, addr="127.0.0.1")

    def save(self, step: int) -> None:
        folder = self.root / step_dir_name(step)
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "weights.bin").write_bytes(b"w" * 64)
        metrics = ckpt_metrics(step)
        (folder / CHECKPOINT_METRICS_FILE).write_text(json.dumps(metrics))
        (folder / CHECKPOINT_COMPLETE_MARKER).write_text(f"{step}\n")
        self.exporter.list_checkpoint(step, metrics)
        self.exporter.record_step(step, 2.0, 1e-4, 1e5, 0.0)
        self.exporter.record_eval(step, metrics["domain_perplexity"], {"general-ppl": 10.1}, {"general-ppl": 10.0}, 0.01)

    def deliver(self, retain: dict) -> list[str]:
        """The kubelet refreshing the mounted ConfigMap, then the trainer applying it."""
        self.retain_file.write_text(json.dumps(retain))
        deleted = self.manager.apply_retain_list()
        for name in deleted:
            self.exporter.unlist_checkpoint(int(name[len("step-") :]))
        return deleted

    def on_disk(self) -> set[int]:
        return {int(p.name[5:]) for p in self.root.iterdir() if p.name.startswith("step-")}


@pytest.fixture
def volume(tmp_path):
    v = Volume(tmp_path)
    yield v
    v.exporter.close()


def control(volume: Volume, legal, status: dict):
    spec, policy = legal
    m = scrape_run_metrics(f"http://127.0.0.1:{volume.port}/metrics", NS, RUN)
    store = VolumeCheckpointStore(f"/mnt/cpt/pvc/team-data/checkpoints/{NS}/{RUN}", m.volume_checkpoints, m.baseline_domain_perplexity)
    out = control_step(ControlInputs(NS, RUN, 1, spec, policy, status, m, None, store, time.time()))
    return out, {**status, **out.status_patch}


def test_the_trainer_listing_drives_the_retain_list_and_the_trainer_applies_it(volume, legal):
    for step in STEPS:
        volume.save(step)
    first, status = control(volume, legal, {"phase": "Running"})
    # Seen once: recorded, nothing released yet (a step goes only once two passes list it).
    assert first.deleted == [] and first.retain == {"keep": [step_dir_name(s) for s in STEPS], "decidedThroughStep": -1, "delete": []}
    out, status = control(volume, legal, status)
    expected = {5500, 6000, 1500, 2500, 5000}  # last 2, best 2 by domain perplexity, milestone 5000
    released = sorted(set(STEPS) - expected)
    assert out.retain == {"keep": [step_dir_name(s) for s in sorted(expected)], "decidedThroughStep": max(released),
                          "delete": [step_dir_name(s) for s in released]}  # fmt: skip
    assert {r["step"] for r in status["checkpoints"] if not r["deleted"]} == expected
    assert status["bestCheckpoint"]["step"] == 1500
    assert next(c for c in status["conditions"] if c["type"] == CHECKPOINTS_ROTATED)["status"] == "True"
    assert len(out.deleted) == len(STEPS) - len(expected)

    # The trainer has not applied it yet: the next pass sees the same listing, and a
    # checkpoint whose deletion is pending is neither recorded again nor deleted twice.
    again, status = control(volume, legal, status)
    assert again.deleted == [] and again.retain == out.retain
    assert {r["step"] for r in status["checkpoints"] if not r["deleted"]} == expected

    deleted = volume.deliver(out.retain)
    assert volume.on_disk() == expected
    assert len(deleted) == len(STEPS) - len(expected)
    after, status = control(volume, legal, status)
    # Carried out: nothing is listed that is still to go, so nothing is released.
    assert after.deleted == [] and after.retain == {"keep": out.retain["keep"], "decidedThroughStep": -1, "delete": []}
    assert len(status["checkpoints"]) == len(STEPS)  # the deleted ones stay on record, marked deleted


def test_a_checkpoint_saved_after_the_decision_survives_a_stale_retain_list(volume, legal):
    for step in STEPS:
        volume.save(step)
    _, status = control(volume, legal, {"phase": "Running"})
    out, _ = control(volume, legal, status)
    volume.save(6500)  # saved before the ConfigMap update reached the pod
    volume.save(7000)
    volume.deliver(out.retain)
    # The list decided nothing past step 4500 (the newest it released): 6500 and 7000 stay, whatever it names.
    assert out.retain["decidedThroughStep"] == 4500
    assert volume.on_disk() == {1500, 2500, 5000, 5500, 6000, 6500, 7000}
    nxt, status = control(volume, legal, {"phase": "Running"})  # a restarted operator: no status at all
    assert nxt.retain["decidedThroughStep"] == -1 and nxt.deleted == []  # it has seen nothing twice yet
    nxt, _ = control(volume, legal, status)
    assert nxt.retain["decidedThroughStep"] == 6000 and nxt.retain["delete"] == ["step-00005500", "step-00006000"]
    volume.deliver(nxt.retain)
    assert volume.on_disk() == {1500, 2500, 5000, 6500, 7000}


def test_no_listing_yet_leaves_the_last_retain_list_in_place(volume, legal):
    volume.exporter.record_step(10, 2.0, 1e-4, 1e5, 0.0)  # a trainer that has saved nothing yet
    out, status = control(volume, legal, {"phase": "Running"})
    assert out.retain is None and out.deleted == []
    assert status.get("checkpoints") == []


def test_a_crafted_listing_cannot_release_anything_outside_the_run(legal):
    store = VolumeCheckpointStore(f"/mnt/cpt/pvc/c/{NS}/{RUN}", {500: ckpt_metrics(500)})
    from cpt_operator.control.storage import DeletionRefused

    with pytest.raises(DeletionRefused):
        store.delete(f"/mnt/cpt/pvc/c/{NS}/other-run/step-00000500")
    with pytest.raises(DeletionRefused):
        store.delete(f"/mnt/cpt/pvc/c/{NS}/{RUN}/step-00000500/../../x")
    assert store.released == []
