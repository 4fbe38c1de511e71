"""What a control pass may conclude from an incomplete or old answer.

- A Prometheus answer with `warnings` (a partial response) decides no deletion.
- A checkpoint is deleted only once it is recorded and two consecutive passes list it: a
  step a listing missed (an HA pair's replicas disagree) is not released, and on a PVC the
  retain list's horizon is the newest released step, not the newest listed.
- Staleness is the age of the samples themselves (Prometheus' own sample timestamps; a direct
  scrape's time), not of the query."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from cpt_operator.api.resources import load_manifests
from cpt_operator.control.checkpoint_records import UNCONFIRMED, UNLISTED
from cpt_operator.control.prometheus import PrometheusClient, RunMetrics, scrape_run_metrics
from cpt_operator.control.run_control import (
    CHECKPOINTS_ROTATED,
    METRICS_AVAILABLE,
    PARTIAL_METRICS,
    ControlInputs,
    control_step,
)
from cpt_operator.control.storage import StoredCheckpoint, VolumeCheckpointStore, confined_step, step_dir_name
from cpt_trainer.contract import metrics as names

REPO = Path(__file__).resolve().parents[2]
NS, RUN, UID = "legal-team", "llama3-8b-legal", "5e7c0000-0000-4000-8000-000000000001"
PREFIX = f"s3://legal-team-checkpoints/cpt/{NS}/{RUN}"
STEPS = list(range(500, 3001, 500))


@pytest.fixture(scope="module")
def legal():
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "legal-cpt"])}
    policy = res["CheckpointPolicy"].spec.model_copy(update={"milestone_interval": 0, "keep_best_k": 1, "best_metric": "domainPerplexity"})
    return res["CPTRun"].spec, policy  # keepLastN 2, keepBestK 1


def ckpt(step: int) -> dict[str, Any]:
    return {"step": step, "domain_perplexity": 10.0 if step == 1000 else 20.0, "general_scores": {"general-ppl": 10.1},
            "general_regression": 0.01, "baseline_domain_perplexity": 30.0}  # fmt: skip


class Store:
    """An S3-like store in memory: deletions happen at once; `hidden` steps are missing from
    the listing (a listing that is incomplete) although they are stored."""

    deletes_later = False

    def __init__(self, steps: list[int]):
        self.prefix = PREFIX
        self.stored = {s: ckpt(s) for s in steps}
        self.hidden: set[int] = set()

    def list_complete(self) -> list[StoredCheckpoint]:
        return [StoredCheckpoint(s, f"{PREFIX}/{step_dir_name(s)}") for s in sorted(self.stored) if s not in self.hidden]

    def read_metrics(self, step: int) -> dict[str, Any] | None:
        return self.stored.get(step)

    def delete(self, uri: str) -> None:
        del self.stored[confined_step(PREFIX, uri)]

    def delete_run(self) -> int:
        raise NotImplementedError


def metrics(now: float, step: int = 3000, warnings: list[str] | None = None) -> RunMetrics:
    m = RunMetrics(newest_timestamp=now, warnings=list(warnings or []))
    m.values = {names.STEP.name: step, names.TOKENS_SEEN.name: step * 2_097_152, names.TOKENS_PER_SECOND.name: 5e5,
                names.EVAL_STEP.name: step, names.GENERAL_REGRESSION.name: 0.01, names.DOMAIN_PERPLEXITY.name: 20.0}  # fmt: skip
    return m


def one_pass(legal, status: dict, store, m: RunMetrics, now: float):
    spec, policy = legal
    out = control_step(ControlInputs(NS, RUN, 1, spec, policy, copy.deepcopy(status), m, None, store, now))
    return out, {**status, **copy.deepcopy(out.status_patch)}


def rotated(status: dict) -> dict:
    return next(c for c in status["conditions"] if c["type"] == CHECKPOINTS_ROTATED)


def test_an_answer_with_warnings_deletes_nothing(legal):
    store = Store(STEPS)
    now = time.time()
    _, status = one_pass(legal, {}, store, metrics(now), now)  # recorded: every step could go on the next pass
    warning = "remote read: store eu-1 did not answer; the answer may be incomplete"
    events = []
    for i in range(2):
        out, status = one_pass(legal, status, store, metrics(now, warnings=[warning]), now + 30 * (i + 1))
        events += [e for e in out.events if e[1] == PARTIAL_METRICS]
        assert out.deleted == [] and sorted(store.stored) == STEPS
        assert not any(r["deleted"] for r in status["checkpoints"])
        cond = rotated(status)
        assert (cond["status"], cond["reason"]) == ("False", PARTIAL_METRICS) and warning in cond["message"]
    assert len(events) == 1 and events[0][0] == "Warning"  # once, not every pass
    out, status = one_pass(legal, status, store, metrics(now), now + 90)  # a complete answer again
    assert sorted(store.stored) == [1000, 2500, 3000] and rotated(status)["status"] == "True"


def test_a_step_seen_on_one_pass_only_is_not_deleted_and_seen_twice_it_is_rotated(legal):
    store = Store(STEPS)
    now = time.time()
    first, status = one_pass(legal, {}, store, metrics(now), now)
    assert first.deleted == [] and sorted(store.stored) == STEPS
    assert all(UNCONFIRMED in r["keptFor"] for r in status["checkpoints"])
    assert "3 to delete once two consecutive passes list them" in rotated(status)["message"]
    second, status = one_pass(legal, status, store, metrics(now), now + 30)
    assert sorted(store.stored) == [1000, 2500, 3000]  # best by domain perplexity, last two
    assert {confined_step(PREFIX, u) for u in second.deleted} == {500, 1500, 2000}
    assert all(UNCONFIRMED not in r["keptFor"] for r in status["checkpoints"])


def test_a_step_a_listing_missed_must_be_listed_twice_in_a_row_again(legal):
    store = Store(STEPS)
    now = time.time()
    _, status = one_pass(legal, {}, store, metrics(now), now)
    store.hidden = {500, 1000, 1500}  # the next answer misses them (another Prometheus replica, a gap)
    out, status = one_pass(legal, status, store, metrics(now), now + 30)
    assert {confined_step(PREFIX, u) for u in out.deleted} == {2000}
    records = {r["step"]: r for r in status["checkpoints"]}
    assert records[1000]["keptFor"] == ["bestK", "best", UNLISTED]  # kept, and marked
    assert 500 not in records and 1500 not in records  # neither kept nor listed: recorded anew when listed again
    store.hidden = set()
    out, status = one_pass(legal, status, store, metrics(now), now + 60)  # listed again: once
    assert out.deleted == [] and {500, 1500} <= set(store.stored)
    assert UNCONFIRMED in {r["step"]: r for r in status["checkpoints"]}[1000]["keptFor"]
    out, status = one_pass(legal, status, store, metrics(now), now + 90)  # twice in a row
    assert {confined_step(PREFIX, u) for u in out.deleted} == {500, 1500}


def test_on_a_volume_only_recorded_steps_seen_twice_are_released(legal):
    """The retain list names for deletion exactly the recorded steps two passes listed, and its
    horizon (decidedThroughStep, up to which the trainer deletes what `keep` does not name) is
    the newest of them, no longer the newest step listed."""
    prefix = f"/mnt/cpt/pvc/team/checkpoints/{NS}/{RUN}"
    listing = {s: ckpt(s) for s in STEPS if s != 1500}  # 1500 is on the volume; these answers miss it
    now = time.time()
    fresh, status = one_pass(legal, {}, VolumeCheckpointStore(prefix, listing, 30.0), metrics(now), now)
    assert fresh.retain == {"keep": [step_dir_name(s) for s in sorted(listing)], "decidedThroughStep": -1, "delete": []}
    out, status = one_pass(legal, status, VolumeCheckpointStore(prefix, listing, 30.0), metrics(now), now + 30)
    assert out.retain["delete"] == [step_dir_name(500), step_dir_name(2000)]  # kept: best 1000, last two 2500, 3000
    assert out.retain["decidedThroughStep"] == 2000 < max(listing)
    assert step_dir_name(1500) not in out.retain["delete"] + out.retain["keep"]
    assert 1500 not in {r["step"] for r in status["checkpoints"]}


class FakeResponse:
    def __init__(self, payload: dict[str, Any]):
        self.status_code = 200
        self.payload = payload

    def json(self) -> dict[str, Any]:
        return self.payload


class FakePrometheusHTTP:
    """The Prometheus HTTP API's answers: instant vectors as [evaluation time, value] pairs; the
    `timestamp()` query answers each series' own sample time as its value."""

    def __init__(self, sample_time: float, warnings: list[str] | None = None):
        self.sample_time = sample_time
        self.warnings = warnings
        self.queries: list[str] = []

    def get(self, url: str, params: dict[str, Any], timeout: float, verify: Any) -> FakeResponse:
        query, at = params["query"], float(params.get("time", time.time()))
        self.queries.append(query)
        identity = {"namespace": NS, "run": RUN, "run_uid": UID, "pod": "p-master-0"}
        if query.startswith("timestamp("):
            result = [{"metric": identity, "value": [at, str(self.sample_time)]}]
        elif query.endswith("s]"):
            result = []
        else:
            result = [{"metric": {"__name__": names.STEP.name, **identity}, "value": [at, "3000"]},
                      {"metric": {"__name__": names.TOKENS_PER_SECOND.name, **identity}, "value": [at, "500000"]}]  # fmt: skip
        payload: dict[str, Any] = {"status": "success", "data": {"resultType": "vector", "result": result}}
        if self.warnings:
            payload["warnings"] = self.warnings
        return FakeResponse(payload)


def client_for(http: FakePrometheusHTTP) -> PrometheusClient:
    client = PrometheusClient("http://prometheus.test")
    client.session = http  # type: ignore[assignment]
    return client


def test_prometheus_warnings_are_surfaced():
    http = FakePrometheusHTTP(time.time(), warnings=["PromQL info: partial response from store-gateway"])
    m = client_for(http).run_metrics(NS, RUN, UID, 120.0)
    assert m.warnings and all("partial response" in w for w in m.warnings)
    assert client_for(FakePrometheusHTTP(time.time())).run_metrics(NS, RUN, UID).warnings == []


def test_samples_older_than_metrics_stale_seconds_are_stale(legal):
    now = time.time()
    http = FakePrometheusHTTP(sample_time=now - 600)  # last scraped ten minutes ago; the query answers "now"
    m = client_for(http).run_metrics(NS, RUN, UID)
    assert f"timestamp({names.STEP.name}{{" in http.queries[1]
    assert m.newest_timestamp == pytest.approx(now - 600) and m.get(names.STEP) == 3000
    spec, policy = legal
    store = Store(STEPS)
    out = control_step(ControlInputs(NS, RUN, 1, spec, policy, {}, m, None, store, time.time(), stale_after_seconds=300.0))
    cond = next(c for c in out.status_patch["conditions"] if c["type"] == METRICS_AVAILABLE)
    assert (cond["status"], cond["reason"]) == ("False", "MetricsStale")
    assert out.deleted == [] and "checkpoints" not in out.status_patch
    fresh = client_for(FakePrometheusHTTP(sample_time=time.time() - 20)).run_metrics(NS, RUN, UID)
    out = control_step(ControlInputs(NS, RUN, 1, spec, policy, {}, fresh, None, store, time.time(), stale_after_seconds=300.0))
    assert next(c for c in out.status_patch["conditions"] if c["type"] == METRICS_AVAILABLE)["status"] == "True"


def test_a_direct_scrape_is_as_old_as_the_scrape():
    registry = CollectorRegistry()
    Gauge(names.STEP.name, names.STEP.help, ["namespace", "run"], registry=registry).labels(NS, RUN).set(42)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        before = time.time()
        m = scrape_run_metrics(f"http://127.0.0.1:{server.server_port}/metrics", NS, RUN)
        assert m.get(names.STEP) == 42 and before <= m.newest_timestamp <= time.time()
    finally:
        server.shutdown()
