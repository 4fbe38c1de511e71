"""The operator restarted between two evaluations: nothing recorded twice, nothing lost.

The real Kopf operator runs against the emulated API server and reads Debian's Prometheus,
which scrapes a prometheus_client exporter on loopback standing in for the trainer. Operator
A records the first evaluation and is killed (its task cancelled mid-work, as a crash
would). While no operator runs, the trainer evaluates twice more, so the evaluation at step
1000 survives only in Prometheus' history. Operator B, started afresh on the same API
server, must recover it (the control loop's range query), record every step once, rotate
the checkpoints by the policy and post the forgetting Warning once. A third start, with no
new data, must change nothing.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import json
from typing import Any

import kmock
import requests

from flows import condition, eventually, status_of, wait_object
from harness import OperatorProcess
from loopback_servers import prometheus_factory  # noqa: F401  (fixture)
from trainer_exporter import RUN, TrainerExporter, start_operator, start_run
from cpt_operator import kube
from cpt_operator.handlers.control import EVENTS
from cpt_operator.render.names import pytorchjob_name, retain_configmap_name
from cpt_trainer.contract import metrics as names

NS = "tenant-restart"  # control interval 0.5 s (start_operator's default)
# The range query of the control loop samples the window every 5 s (PrometheusClient.run_metrics
# step_seconds): an evaluation must stay current in Prometheus longer than that to be seen.
RANGE_QUERY_STEP = 5.0
REGRESSION = 0.06  # over the example's 3 % threshold at every evaluation: patience 3 halts at the 3rd
BASELINE_DOMAIN = 30.0


def eval_domain(step: int) -> float:
    """The domain perplexity of the evaluation gauges (19.5, 19.0, 18.5)."""
    return 20.0 - step / 1000


# What the trainer lists with each checkpoint; deliberately unlike `eval_domain`, so the test
# can tell an evaluation recovered from Prometheus' history from one filled in from a
# checkpoint record (control_step merges both; the first record of a step wins).
CKPT_DOMAIN = {500: 25.0, 1000: 24.0, 1500: 23.0}


class FakeTrainer(TrainerExporter):
    """The trainer of the one run of these tests: each evaluation comes with its checkpoint."""

    def publish(self, step: int) -> None:
        self.evaluate(NS, step, REGRESSION, eval_domain(step))
        self.list_checkpoint(NS, step, CKPT_DOMAIN[step], REGRESSION, BASELINE_DOMAIN)


async def prometheus_eval_step(url: str, namespace: str) -> int | None:
    """The instant value of the run's cpt_eval_step in Prometheus (None before the first scrape)."""
    query = f'{names.EVAL_STEP.name}{{namespace="{namespace}",run="{RUN}"}}'

    def get() -> int | None:
        result = requests.get(url + "/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
        return int(float(result[0]["value"][1])) if result else None

    return await asyncio.to_thread(get)


async def wait_scraped(url: str, step: int) -> None:
    async def check() -> bool:
        return await prometheus_eval_step(url, NS) == step

    await eventually(check, timeout=15, interval=0.1, what=f"Prometheus to scrape the evaluation at step {step}")


def control_passes(op: OperatorProcess) -> int:
    """How many control passes this operator began (each lists the CPTRuns cluster-wide once)."""
    path = kube.CPTRUNS.path("")
    return sum(1 for verb, p in list(op.kube.calls or []) if verb == "list" and p == path)


async def wait_passes(op: OperatorProcess, n: int) -> None:
    """Until `op` completed at least `n` control passes (the (n+1)-th began)."""
    async def check() -> bool:
        return control_passes(op) > n

    await eventually(check, timeout=20, interval=0.1, what=f"{n} control passes")


def steps_of(records: list[dict[str, Any]] | None) -> list[int]:
    return [int(r["step"]) for r in records or []]


def warnings_of(events: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [(e["involvedObject"]["name"], e["reason"], e["message"]) for e in events if e.get("type") == "Warning"]


def decided(st: dict[str, Any]) -> dict[str, Any]:
    """What a restart must not change: the records, the decisions, the conditions (less their times)."""
    conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in st.get("conditions") or []]
    return copy.deepcopy({
        "evaluations": st.get("evaluations"), "checkpoints": st.get("checkpoints"), "phase": st.get("phase"),
        "halt": st.get("halt"), "bestCheckpoint": st.get("bestCheckpoint"),
        "conditions": sorted(conditions, key=lambda c: c["type"]),
    })  # fmt: skip


async def test_operator_killed_between_evaluations_records_each_once_and_loses_none(
    cluster: Any, client: kube.KubeClient, prometheus_factory: Any
) -> None:
    _, url = cluster
    prom = prometheus_factory()
    trainer = FakeTrainer(prom)
    operators: list[OperatorProcess] = []
    try:
        # 1. Operator A records the first evaluation and its checkpoint.
        a = await start_operator(url, prom.url)
        operators.append(a)
        await start_run(client, NS, trainer)
        trainer.publish(500)

        async def recorded(step: int) -> Any:
            st = await status_of(client, kube.CPTRUNS, NS, RUN)
            done = step in steps_of(st.get("evaluations")) and step in steps_of(st.get("checkpoints"))
            return st if done and (st.get("progress") or {}).get("step") == step else None

        st = await eventually(lambda: recorded(500), timeout=20, what="operator A to record step 500")
        assert steps_of(st["evaluations"]) == [500]
        assert st["evaluations"][0]["domainPerplexity"] == eval_domain(500)
        assert st["phase"] == "Running" and condition(st, "ForgettingThresholdExceeded")["status"] == "False"
        assert warnings_of(await client.list(EVENTS, NS)) == []

        # 2. A crashes. Meanwhile the trainer evaluates at 1000, then at 1500: the evaluation
        # at 1000 stays current in Prometheus just long enough for the range query's grid.
        await a.kill()
        assert a.thread is None
        trainer.publish(1000)
        await wait_scraped(prom.url, 1000)
        await asyncio.sleep(RANGE_QUERY_STEP + 1.0)
        trainer.publish(1500)
        await wait_scraped(prom.url, 1500)
        assert (await status_of(client, kube.CPTRUNS, NS, RUN))["evaluations"] == st["evaluations"], "no operator ran"

        # 3. Operator B starts on the same API server and catches up.
        b = await start_operator(url, prom.url)
        operators.append(b)
        st = await eventually(lambda: recorded(1500), timeout=20, what="operator B to record step 1500")
        await wait_passes(b, control_passes(b) + 3)  # later passes must not add anything either
        st = await status_of(client, kube.CPTRUNS, NS, RUN)

        # 4a. Every evaluation once; the one at 1000 from Prometheus' history, not lost and not
        # replaced by the checkpoint's record of that step.
        evaluations = st["evaluations"]
        assert steps_of(evaluations) == [500, 1000, 1500], evaluations
        for e in evaluations:
            assert e["domainPerplexity"] == eval_domain(e["step"]), f"evaluation at {e['step']} not from the trainer's evaluation: {e}"
            assert e["generalRegression"] == REGRESSION, e

        # 4b. Every checkpoint once; the policy (keepLastN 2, keepBestK 1; nothing within the
        # threshold, so no best) keeps 1000 and 1500 and deletes only 500.
        records = st["checkpoints"]
        assert steps_of(records) == [500, 1000, 1500], records
        by_step = {r["step"]: r for r in records}
        assert {s for s, r in by_step.items() if r["deleted"]} == {500}, records
        for step in (1000, 1500):
            assert by_step[step]["keptFor"], f"checkpoint {step} kept for no reason: {by_step[step]}"
        assert by_step[1500]["keptFor"] == ["newest", "lastN"] and by_step[1000]["keptFor"] == ["lastN"], records
        assert by_step[500]["keptFor"] == [], records
        assert all(r["domainPerplexity"] == CKPT_DOMAIN[r["step"]] for r in records), records
        assert all(r["uri"].endswith(f"step-{r['step']:08d}") for r in records), records
        cm = await wait_object(client, kube.CONFIGMAPS, NS, retain_configmap_name(RUN))
        retain = json.loads(cm["data"]["retain.json"])
        assert retain == {"keep": ["step-00001000", "step-00001500"], "decidedThroughStep": 500, "delete": ["step-00000500"]}, retain

        # 4c. Three evaluations over the threshold (one of them only in the history): halted
        # once, with one Warning Event.
        assert st["phase"] == "Halted", st.get("phase")
        assert st["halt"]["step"] == 1500 and st["halt"]["regression"] == REGRESSION, st["halt"]
        forgetting = condition(st, "ForgettingThresholdExceeded")
        assert forgetting["status"] == "True" and "for 3 consecutive evaluations" in forgetting["message"], forgetting
        job = await client.get(kube.PYTORCHJOBS, NS, pytorchjob_name(RUN))
        assert job["spec"]["runPolicy"]["suspend"] is True, "the run is Halted but its PyTorchJob runs"
        events = await client.list(EVENTS, NS)
        warnings = warnings_of(events)
        duplicates = [w for w, n in collections.Counter(warnings).items() if n > 1]
        assert duplicates == [], f"Warning Events posted twice: {duplicates}"
        assert [w[1] for w in warnings] == ["ForgettingThresholdExceeded"], warnings

        # 5. A third start, with no new data, changes nothing.
        before = decided(st)
        events_before = sorted(e["metadata"]["name"] for e in events)
        await b.kill()
        c = await start_operator(url, prom.url)
        operators.append(c)
        await wait_passes(c, 4)
        after = await status_of(client, kube.CPTRUNS, NS, RUN)
        assert after["metrics"]["evalStep"] == 1500 and condition(after, "MetricsAvailable")["status"] == "True"
        assert decided(after) == before
        events_after = await client.list(EVENTS, NS)
        assert warnings_of(events_after) == warnings, "the third start posted Warning Events"
        new_events = sorted(set(e["metadata"]["name"] for e in events_after) - set(events_before))
        ours = [e for e in events_after if e["metadata"]["name"] in new_events and (e.get("source") or {}).get("component") == "cpt-operator"]
        assert ours == [], f"the third start posted Events: {ours}"
        cm_after = await client.get(kube.CONFIGMAPS, NS, retain_configmap_name(RUN))
        assert cm_after["data"] == cm["data"]
        job = await client.get(kube.PYTORCHJOBS, NS, pytorchjob_name(RUN))
        assert job["spec"]["runPolicy"]["suspend"] is True, "the third start resumed the halted run's PyTorchJob"
    finally:
        for op in operators:
            await op.stop()  # a no-op for the killed ones
        trainer.close()


async def test_halt_survives_a_reconcile_during_the_halt(cluster: Any, client: kube.KubeClient, prometheus_factory: Any) -> None:
    """The halting pass writes the retain list, the status (phase Halted) and suspends the
    PyTorchJob; the job's change wakes the run's reconciler (touch). A reconcile that reads
    the run before phase Halted lands must not undo the suspension. The API server here
    answers the retain ConfigMap write 2 s late, which widens any window between the job's
    suspension and the status write (when the pass suspended the job first, its reconcile
    un-suspended it every time; the first pass of a restarted operator, racing its resume
    handler, did too, now and then, in the test above)."""
    emulator, url = cluster
    prom = prometheus_factory()
    trainer = FakeTrainer(prom)
    slow = asyncio.Event()
    handle = emulator._handle

    async def slow_retain_write(request: Any) -> Any:
        if (slow.is_set() and request.action == kmock.action.CREATE and getattr(request.resource, "plural", None) == "configmaps"
                and ((request.data or {}).get("metadata") or {}).get("name") == retain_configmap_name(RUN)):  # fmt: skip
            await asyncio.sleep(2.0)
        return await handle(request)

    emulator._handle = slow_retain_write
    op: OperatorProcess | None = None
    try:
        op = await start_operator(url, prom.url)
        await start_run(client, NS, trainer)
        for step in (500, 1000):
            trainer.publish(step)

            async def recorded(step: int = step) -> bool:
                return step in steps_of((await status_of(client, kube.CPTRUNS, NS, RUN)).get("evaluations"))

            await eventually(recorded, timeout=20, what=f"step {step} recorded")
        assert (await status_of(client, kube.CPTRUNS, NS, RUN))["phase"] == "Running"
        slow.set()
        trainer.publish(1500)  # the third evaluation over the threshold: this pass halts

        async def halted() -> Any:
            st = await status_of(client, kube.CPTRUNS, NS, RUN)
            return st if st.get("phase") == "Halted" else None

        await eventually(halted, timeout=20, what="the halt")
        slow.clear()
        await wait_passes(op, control_passes(op) + 3)
        job = await client.get(kube.PYTORCHJOBS, NS, pytorchjob_name(RUN))
        assert job["spec"]["runPolicy"]["suspend"] is True, "the run is Halted but its PyTorchJob runs again"
    finally:
        emulator._handle = handle
        if op is not None:
            await op.stop()
        trainer.close()
