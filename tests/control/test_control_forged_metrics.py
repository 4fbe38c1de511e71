"""Security review, issue 12: forged metrics must not halt another tenant's run or delete its
checkpoints.

The attack, performed for real: Debian's Prometheus scrapes the victim's trainer (team-b, the
real `TrainerMetrics` exporter over a real checkpoint folder, with the real `CheckpointManager`
applying the operator's retain list) and two pods of the attacker's namespace (team-a) that
carry the PodMonitor's labels and export `namespace="team-b",run="victim"` (and a `run_uid`
claiming the victim's) with a fake checkpoint step and a general regression of 0.9. One of
them even copies the victim's pod labels (cpt.dev/run, cpt.dev/run-uid: uids are no secret).

How the Prometheus here mirrors the chart: `loopback_servers.PrometheusServer` applies the
PodMonitor's honorLabels (false) and relabelings (`PODMONITOR_RELABELINGS`, which
tests/chart/test_chart_metrics_identity.py asserts equal to the rendered chart's) to targets
found by file-based discovery, each described with the `__meta_kubernetes_namespace` and
`__meta_kubernetes_pod_label_*` labels Kubernetes pod discovery gives a pod (`PodTarget`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from loopback_servers import PodTarget, free_port
from cpt_operator.api.resources import load_manifests
from cpt_operator.control.prometheus import PrometheusClient, RunMetrics, label_matcher
from cpt_operator.control.run_control import (
    CHECKPOINT_LISTING,
    FORGETTING,
    IMPLAUSIBLE_STEPS,
    ControlInputs,
    control_step,
    plausible_listing,
    volume_store,
)
from cpt_operator.control.storage import step_dir_name
from cpt_operator.render.trainer_config import total_steps
from cpt_trainer.contract import metrics as names
from cpt_trainer.contract.config import CheckpointConfig, RunIdentity, S3Settings
from cpt_trainer.contract.metrics import CHECKPOINT_COMPLETE_MARKER, CHECKPOINT_METRICS_FILE
from cpt_trainer.train.checkpointing import CheckpointManager
from cpt_trainer.train.distributed import DistEnv
from cpt_trainer.train.metrics_exporter import TrainerMetrics

REPO = Path(__file__).resolve().parents[2]
VICTIM_NS, VICTIM, VICTIM_UID = "team-b", "victim", "5b0c1d2e-0000-4000-8000-00000000b0b0"
ATTACKER_NS = "team-a"
FAKE_STEP = 90_000_000
REAL_STEPS = list(range(500, 6001, 500))
BEST = {1500: 12.0, 2500: 12.5}  # the victim's best checkpoints by domain perplexity
PREFIX = f"/mnt/cpt/pvc/team-data/checkpoints/{VICTIM_NS}/{VICTIM}"


@pytest.fixture(scope="module")
def legal():
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "legal-cpt"])}
    policy = res["CheckpointPolicy"].spec.model_copy(update={"best_metric": "domainPerplexity"})
    return res["CPTRun"].spec, policy  # patience 3 over 3 %, Halt; keepLastN 2, keepBestK 2, milestones every 5000


def pod(namespace: str, run: str, uid: str, port: int) -> PodTarget:
    """A trainer pod as Kubernetes discovery sees it: the labels the operator renders on it."""
    return PodTarget(f"127.0.0.1:{port}", namespace, {
        "app.kubernetes.io/part-of": "cpt-operator", "app.kubernetes.io/component": "trainer",
        "cpt.dev/replica-type": "master", "cpt.dev/run": run, "cpt.dev/run-uid": uid,
    })  # fmt: skip


def wait_for(predicate, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


class VictimTrainer:
    """team-b's trainer: real checkpoints on a folder, the real exporter and checkpoint manager."""

    def __init__(self, tmp_path: Path, namespace: str = VICTIM_NS, run: str = VICTIM, uid: str = VICTIM_UID):
        self.root = tmp_path / "pvc" / namespace / run
        self.root.mkdir(parents=True)
        self.retain_file = tmp_path / "retain" / "retain.json"
        self.retain_file.parent.mkdir()
        cfg = CheckpointConfig(interval=500, uri=str(self.root), retain_file=str(self.retain_file))
        self.manager = CheckpointManager(cfg, S3Settings(), tmp_path / "cache", DistEnv(), total_steps=10_000)
        self.exporter = TrainerMetrics(RunIdentity(namespace=namespace, name=run, uid=uid))
        self.port = self.exporter.serve(0, addr="127.0.0.1")

    def save(self, step: int, regression: float = 0.01) -> None:
        folder = self.root / step_dir_name(step)
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "weights.bin").write_bytes(b"w" * 64)
        metrics = {"step": step, "domain_perplexity": BEST.get(step, 20.0), "general_scores": {"general-ppl": 10.1},
                   "general_regression": regression, "baseline_domain_perplexity": 30.0}  # fmt: skip
        (folder / CHECKPOINT_METRICS_FILE).write_text(json.dumps(metrics))
        (folder / CHECKPOINT_COMPLETE_MARKER).write_text(f"{step}\n")
        self.exporter.list_checkpoint(step, metrics)
        self.exporter.record_step(step, 2.0, 1e-4, 1e5, 0.0)
        self.exporter.record_eval(step, metrics["domain_perplexity"], {"general-ppl": 10.1}, {"general-ppl": 10.0}, regression)

    def deliver(self, retain: dict | None) -> list[str]:
        """The kubelet refreshing the retain ConfigMap, then the trainer applying it (deleting)."""
        if retain is None:
            return []
        self.retain_file.write_text(json.dumps(retain))
        return self.manager.apply_retain_list()

    def on_disk(self) -> set[int]:
        return {int(p.name[5:]) for p in self.root.iterdir() if p.name.startswith("step-")}

    def close(self) -> None:
        self.exporter.close()


def forging_exporter(claims: dict[str, str], step: int = FAKE_STEP, regression: float = 0.9):
    """What a hostile pod serves: the contract's metrics with whatever identity labels it likes."""
    registry = CollectorRegistry()
    keys = tuple(claims)

    def gauge(spec: names.MetricSpec, extra: tuple[str, ...] = ()) -> Gauge:
        return Gauge(spec.name, spec.help, keys + extra, registry=registry)

    values = tuple(claims.values())
    for spec, value in ((names.STEP, step), (names.EVAL_STEP, step), (names.GENERAL_REGRESSION, regression),
                        (names.DOMAIN_PERPLEXITY, 1.0), (names.TOKENS_PER_SECOND, 1e5), (names.BASELINE_DOMAIN_PERPLEXITY, 30.0)):  # fmt: skip
        gauge(spec).labels(*values).set(value)
    gauge(names.CHECKPOINT_PRESENT, ("step",)).labels(*values, str(step)).set(1)
    gauge(names.CHECKPOINT_DOMAIN_PERPLEXITY, ("step",)).labels(*values, str(step)).set(1.0)  # "the best ever"
    gauge(names.CHECKPOINT_GENERAL_REGRESSION, ("step",)).labels(*values, str(step)).set(0.0)
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    return port, server


def control_pass(client: PrometheusClient, legal, status: dict[str, Any], uid: str = VICTIM_UID, window: float = 120.0):
    """What handlers.control.control_run does for a PVC run, less the API writes."""
    spec, policy = legal
    m = client.run_metrics(VICTIM_NS, VICTIM, uid, window, 1.0)
    store, implausible = volume_store(PREFIX, spec, m)
    out = control_step(ControlInputs(VICTIM_NS, VICTIM, 1, spec, policy, status, m, None, store, time.time(),
                                     implausible_checkpoints=implausible))  # fmt: skip
    return out, {**status, **out.status_patch}


def steps_in(status: dict[str, Any]) -> set[int]:
    return {int(r["step"]) for r in status.get("checkpoints") or []} | {int(e["step"]) for e in status.get("evaluations") or []}


def test_forged_metrics_from_another_namespace_neither_halt_the_victim_nor_delete_its_checkpoints(
    tmp_path, prometheus_factory, legal
):
    victim = VictimTrainer(tmp_path)
    for step in REAL_STEPS:
        victim.save(step)
    claims = {"namespace": VICTIM_NS, "run": VICTIM, "run_uid": VICTIM_UID}
    own_port, own_server = forging_exporter(claims)  # a team-a pod of a team-a run
    copy_port, copy_server = forging_exporter(claims)  # a team-a pod copying the victim's pod labels
    try:
        prom = prometheus_factory([
            pod(VICTIM_NS, VICTIM, VICTIM_UID, victim.port),
            pod(ATTACKER_NS, "attacker", "a77ac4e2-0000-4000-8000-00000000a0a0", own_port),
            pod(ATTACKER_NS, VICTIM, VICTIM_UID, copy_port),
        ])  # fmt: skip
        client = PrometheusClient(prom.url)
        wait_for(lambda: len(client.query(names.STEP.name)) == 3)  # all three pods scraped

        # The forgeries did reach Prometheus, under the attacker's namespace: the exported
        # identity was renamed (honorLabels false), the discovered one is team-a's.
        forged = client.query(names.CHECKPOINT_PRESENT.name + label_matcher(step=str(FAKE_STEP)))
        assert len(forged) == 2
        for s in forged:
            assert s.labels["namespace"] == ATTACKER_NS
            assert (s.labels["exported_namespace"], s.labels["exported_run"], s.labels["exported_run_uid"]) == (
                VICTIM_NS, VICTIM, VICTIM_UID)  # fmt: skip

        # The victim's run reads only its own pod: its real step, its real listing.
        m = client.run_metrics(VICTIM_NS, VICTIM, VICTIM_UID, 120.0, 1.0)
        assert m.get(names.STEP) == REAL_STEPS[-1] and m.get(names.GENERAL_REGRESSION) == 0.01
        assert sorted(m.volume_checkpoints) == REAL_STEPS
        assert FAKE_STEP not in {int(e["step"]) for e in m.recent_evaluations}

        spec, _ = legal
        status: dict[str, Any] = {"phase": "Running"}
        for _ in range(spec.evaluation.patience + 2):  # more passes than the patience a halt needs
            out, status = control_pass(client, legal, status)
            assert not out.halt and status["phase"] == "Running"
            assert FAKE_STEP not in steps_in(status)
            assert out.retain is not None and step_dir_name(FAKE_STEP) not in out.retain["keep"]
            assert out.retain["decidedThroughStep"] <= REAL_STEPS[-1] and step_dir_name(FAKE_STEP) not in out.retain["delete"]
            victim.deliver(out.retain)
            time.sleep(1.0)
        forgetting = next(c for c in status["conditions"] if c["type"] == FORGETTING)
        assert forgetting["status"] == "False"
        assert status.get("halt") is None
        assert not any(c["type"] == CHECKPOINT_LISTING for c in status["conditions"])  # nothing implausible reached it
        # The trainer applied the operator's list: exactly the policy's choice of its real
        # checkpoints is left, the best one included.
        expected = {5500, 6000, 1500, 2500, 5000}  # last 2, best 2 by domain perplexity, milestone 5000
        assert victim.on_disk() == expected
        assert status["bestCheckpoint"]["step"] == 1500
    finally:
        own_server.shutdown()
        copy_server.shutdown()
        victim.close()


def test_a_recreated_run_of_the_same_name_never_reads_the_old_runs_series(tmp_path, prometheus_factory, legal):
    """The old run (deleted, its pod still terminating) regressed to 0.9 at steps the new run
    has not reached; the new run (same namespace and name, a new uid) must not inherit them."""
    old_uid, new_uid = "01d00000-0000-4000-8000-000000000001", "0e500000-0000-4000-8000-000000000002"
    old = VictimTrainer(tmp_path / "old", uid=old_uid)
    for step in (500, 1000, 1500, 2000):
        old.save(step, regression=0.9)
    new = VictimTrainer(tmp_path / "new", uid=new_uid)
    new.save(500, regression=0.01)
    try:
        prom = prometheus_factory([pod(VICTIM_NS, VICTIM, old_uid, old.port), pod(VICTIM_NS, VICTIM, new_uid, new.port)])
        client = PrometheusClient(prom.url)
        wait_for(lambda: len(client.query(names.STEP.name + label_matcher(namespace=VICTIM_NS, run=VICTIM))) == 2)
        assert client.run_metrics(VICTIM_NS, VICTIM, old_uid).get(names.GENERAL_REGRESSION) == 0.9  # the old series are there

        m = client.run_metrics(VICTIM_NS, VICTIM, new_uid, 120.0, 1.0)
        assert m.get(names.STEP) == 500 and m.get(names.GENERAL_REGRESSION) == 0.01
        assert sorted(m.volume_checkpoints) == [500]
        assert {int(e["step"]) for e in m.recent_evaluations} == {500}
        status: dict[str, Any] = {"phase": "Running"}
        for _ in range(legal[0].evaluation.patience + 1):
            out, status = control_pass(client, legal, status, uid=new_uid)
            assert not out.halt and status["phase"] == "Running"
            assert steps_in(status) == {500}
            assert out.retain == {"keep": [step_dir_name(500)], "decidedThroughStep": -1, "delete": []}
        assert new.on_disk() == {500}
    finally:
        old.close()
        new.close()


def listing(step: float | None, steps: list[int]) -> RunMetrics:
    m = RunMetrics(values={names.TOKENS_PER_SECOND.name: 1e5}, newest_timestamp=time.time())
    if step is not None:
        m.values[names.STEP.name] = step
    m.baseline_domain_perplexity = 30.0
    m.volume_checkpoints = {s: {"domain_perplexity": 1.0 if s > 1000 else 20.0, "general_scores": {}, "general_regression": 0.0}
                            for s in steps}  # fmt: skip
    return m


def test_listed_steps_beyond_total_steps_or_the_reported_step_are_ignored_and_reported(legal):
    spec, policy = legal
    steps = total_steps(spec)
    kept, message = plausible_listing(spec, listing(1000, [500, 1000]))
    assert sorted(kept) == [500, 1000] and message is None
    kept, message = plausible_listing(spec, listing(1000, [500, 1000, 1500, steps + 1]))
    assert sorted(kept) == [500, 1000]
    assert message is not None and f"1500 (beyond the reported cpt_step 1000)" in message
    assert f"{steps + 1} (beyond totalSteps {steps})" in message
    kept, message = plausible_listing(spec, listing(None, [500]))  # no cpt_step: nothing can be checked
    assert kept == {} and "500 (no cpt_step reported)" in message

    # Through a control pass: the implausible steps (the "best" ones by their claimed scores)
    # are never recorded, never kept, never decided through; a record of a step beyond
    # totalSteps left in the status by an earlier pass is dropped.
    forged_record = {"step": steps + 5, "uri": f"{PREFIX}/{step_dir_name(steps + 5)}", "keptFor": ["best"], "deleted": False}
    status: dict[str, Any] = {"phase": "Running", "checkpoints": [forged_record]}
    events = []
    for _ in range(2):
        m = listing(1000, [500, 1000, 1500, steps + 1])
        store, implausible = volume_store(PREFIX, spec, m)
        out = control_step(ControlInputs(VICTIM_NS, VICTIM, 1, spec, policy, status, m, None, store, time.time(),
                                         implausible_checkpoints=implausible))  # fmt: skip
        status = {**status, **out.status_patch}
        events += [e for e in out.events if e[1] == IMPLAUSIBLE_STEPS]
        assert {int(r["step"]) for r in status["checkpoints"]} == {500, 1000}
        assert out.retain == {"keep": [step_dir_name(500), step_dir_name(1000)], "decidedThroughStep": -1, "delete": []}
        assert out.deleted == []
        assert status["bestCheckpoint"]["step"] in (500, 1000)
    cond = next(c for c in status["conditions"] if c["type"] == CHECKPOINT_LISTING)
    assert cond["status"] == "False" and cond["reason"] == IMPLAUSIBLE_STEPS and "1500" in cond["message"]
    assert len(events) == 1 and events[0][0] == "Warning"  # once, not every pass

    m = listing(1500, [500, 1000, 1500])  # the trainer reached 1500: now plausible
    store, implausible = volume_store(PREFIX, spec, m)
    out = control_step(ControlInputs(VICTIM_NS, VICTIM, 1, spec, policy, status, m, None, store, time.time(),
                                     implausible_checkpoints=implausible))  # fmt: skip
    cond = next(c for c in out.status_patch["conditions"] if c["type"] == CHECKPOINT_LISTING)
    assert cond["status"] == "True" and implausible is None
    assert 1500 in {int(r["step"]) for r in out.status_patch["checkpoints"]}


class PodsOnly:
    """The API as the operator's pod listing sees it: pods filtered by label selector, per namespace."""

    def __init__(self, pods: list[dict[str, Any]]):
        self.pods = pods
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def list(self, res: Any, namespace: str, label_selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        self.calls.append((namespace, dict(label_selector or {})))
        return [p for p in self.pods if p["metadata"]["namespace"] == namespace
                and all(p["metadata"]["labels"].get(k) == v for k, v in (label_selector or {}).items())]  # fmt: skip


def k8s_pod(namespace: str, run: str, uid: str) -> dict[str, Any]:
    from cpt_operator.render import names as objnames

    labels = {**objnames.run_labels(namespace, run), objnames.LABEL_RUN_UID: uid, "cpt.dev/replica-type": "master"}
    return {"metadata": {"namespace": namespace, "labels": labels}, "status": {"phase": "Running", "podIP": "127.0.0.1"}}


async def test_the_direct_scrape_fallback_scrapes_only_the_runs_own_pod(tmp_path):
    """Without Prometheus the operator scrapes the run's master pod, found by the run's uid label
    in the run's namespace: a team-a pod (even one with the victim's labels) and the pod of an
    older run of the same name are never scraped."""
    from types import SimpleNamespace

    from cpt_operator.control.prometheus import MetricsUnavailable
    from cpt_operator.handlers.control import scrape_run_pods

    victim = VictimTrainer(tmp_path)
    victim.save(500)
    try:
        ctx = SimpleNamespace(kube=PodsOnly([k8s_pod(ATTACKER_NS, VICTIM, VICTIM_UID), k8s_pod(VICTIM_NS, VICTIM, "old-uid")]))
        with pytest.raises(MetricsUnavailable, match="no running trainer pod"):
            await scrape_run_pods(ctx, VICTIM_NS, VICTIM, VICTIM_UID, victim.port)  # type: ignore[arg-type]
        assert ctx.kube.calls == [(VICTIM_NS, {"cpt.dev/run": VICTIM, "cpt.dev/run-uid": VICTIM_UID,
                                               "app.kubernetes.io/managed-by": "cpt-operator", "cpt.dev/replica-type": "master"})]  # fmt: skip
        ctx.kube.pods.append(k8s_pod(VICTIM_NS, VICTIM, VICTIM_UID))
        m = await scrape_run_pods(ctx, VICTIM_NS, VICTIM, VICTIM_UID, victim.port)  # type: ignore[arg-type]
        assert m.get(names.STEP) == 500 and sorted(m.volume_checkpoints) == [500]
        with pytest.raises(MetricsUnavailable):
            await scrape_run_pods(ctx, VICTIM_NS, VICTIM, "", victim.port)  # type: ignore[arg-type]
    finally:
        victim.close()
