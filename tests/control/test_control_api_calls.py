"""What a control pass asks of the API server: the runs listed in pages, a status patch of only
what changed (none when nothing did), and a retain ConfigMap written only when it is the
run's own (a tenant's `<run>-retain` is never adopted, and no deletion is decided meanwhile)."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cpt_operator import kube
from cpt_operator.api.resources import load_manifests
from cpt_operator.control.prometheus import RunMetrics
from cpt_operator.control.retain_owner import controlled_by, foreign_retain_configmap
from cpt_operator.control.run_control import RETAIN_LIST_NOT_OWNED
from cpt_operator.control.status_patch import changed_fields
from cpt_operator.handlers import control
from cpt_operator.render.names import owner_reference, retain_configmap_name
from cpt_operator.settings import OperatorSettings
from cpt_trainer.contract import metrics as names

REPO = Path(__file__).resolve().parents[2]
NS, RUN, UID = "tenant-a", "docs-cpt", "d0c5c000-0000-4000-8000-000000000001"
CM = retain_configmap_name(RUN)


class FakeKube:
    """The API calls of a control pass, in memory, each one recorded."""

    def __init__(self, objects: dict[tuple[str, str, str], dict[str, Any]]):
        self.objects = objects
        self.calls: list[tuple[str, str, str, Any]] = []  # (verb, plural, name, body)

    async def get(self, res: kube.Resource, ns: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", res.plural, name, None))
        return copy.deepcopy(self.objects.get((res.plural, ns, name)))

    async def list_paginated(self, res: kube.Resource, ns: str, selector: Any = None) -> list[dict[str, Any]]:
        self.calls.append(("list", res.plural, "", None))
        return [copy.deepcopy(v) for (plural, n, _), v in self.objects.items() if plural == res.plural and (not ns or n == ns)]

    async def create(self, res: kube.Resource, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", res.plural, body["metadata"].get("name", ""), body))
        key = (res.plural, ns, body["metadata"].get("name", ""))
        if res.plural != "events" and key in self.objects:
            raise kube.Conflict(409, "exists")
        self.objects[key] = copy.deepcopy(body)
        return body

    async def patch(self, res: kube.Resource, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch", res.plural, name, body))
        self.objects[(res.plural, ns, name)].setdefault("data", {}).update(body.get("data") or {})
        return self.objects[(res.plural, ns, name)]

    async def patch_status(self, res: kube.Resource, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("patch_status", res.plural, name, body))
        obj = self.objects[(res.plural, ns, name)]
        for key, value in body["status"].items():
            if value is None:
                obj["status"].pop(key, None)
            elif isinstance(value, dict) and isinstance(obj["status"].get(key), dict):
                obj["status"][key] = {k: v for k, v in {**obj["status"][key], **value}.items() if v is not None}
            else:
                obj["status"][key] = value
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        return obj

    def verbs(self, verb: str, plural: str) -> list[Any]:
        return [body for v, p, _, body in self.calls if v == verb and p == plural]


class ListingPrometheus:
    """Prometheus as the pass reads it: the run's step, throughput and PVC checkpoint listing."""

    last_latency = None

    def __init__(self, steps: list[int]):
        self.steps = steps

    def run_metrics(self, namespace: str, run: str, uid: str, window: float, step: float) -> RunMetrics:
        m = RunMetrics(newest_timestamp=time.time(), baseline_domain_perplexity=30.0)
        m.values = {names.STEP.name: max(self.steps), names.TOKENS_SEEN.name: 2_097_152, names.TOKENS_PER_SECOND.name: 5e5}
        # The newest is the best: the policy keeps the newest two.
        m.volume_checkpoints = {s: {"domain_perplexity": 30.0 - s / 1000, "general_scores": {}, "general_regression": 0.0}
                                for s in self.steps}  # fmt: skip
        return m


def cluster(extra: dict[tuple[str, str, str], dict[str, Any]] | None = None) -> FakeKube:
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "minimal"])}  # checkpoints on a PVC; keepLastN 2
    run = res["CPTRun"].spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    run["training"]["totalTokens"] = 10**12  # some 480,000 steps: every step listed here is plausible
    policy = res["CheckpointPolicy"].spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    objects = {
        ("checkpointpolicies", NS, "default"): {"metadata": {"name": "default", "namespace": NS}, "spec": policy},
        ("cptruns", NS, RUN): {"apiVersion": "cpt.dev/v1alpha1", "kind": "CPTRun",
                               "metadata": {"name": RUN, "namespace": NS, "uid": UID, "generation": 1, "resourceVersion": "1"},
                               "spec": run, "status": {"phase": "Running"}},
    }  # fmt: skip
    objects.update(extra or {})
    return FakeKube(objects)


def ctx_for(kube_: FakeKube) -> Any:
    return SimpleNamespace(settings=OperatorSettings(), kube=kube_, retain_written={})


async def one_pass(ctx: Any, prom: ListingPrometheus) -> dict[str, Any]:
    await control.control_run(ctx, prom, copy.deepcopy(ctx.kube.objects[("cptruns", NS, RUN)]))
    return ctx.kube.objects[("cptruns", NS, RUN)]["status"]


# --------------------------------------------------------------------------- status patch


def test_changed_fields_is_the_smallest_merge_patch():
    current = {"phase": "Running", "progress": {"step": 10, "etaSeconds": 5.0, "totalSteps": 100}, "halt": {"step": 3},
               "checkpoints": [{"step": 1}], "other": "theirs"}  # fmt: skip
    assert changed_fields(current, {"phase": "Running", "checkpoints": [{"step": 1}], "progress": {"step": 10, "etaSeconds": 5.0, "totalSteps": 100}}) == {}
    assert changed_fields(current, {"progress": {"step": 11, "totalSteps": 100}, "halt": None, "checkpoints": [{"step": 1}, {"step": 2}]}) == {
        "progress": {"step": 11, "etaSeconds": None}, "halt": None, "checkpoints": [{"step": 1}, {"step": 2}]}  # fmt: skip
    assert changed_fields({}, {"halt": None}) == {}  # removing what is not there is no change


async def test_a_pass_with_nothing_new_sends_no_status_patch():
    ctx = ctx_for(cluster())
    prom = ListingPrometheus([500, 1000, 1500])
    await one_pass(ctx, prom)  # records the three checkpoints
    await one_pass(ctx, prom)  # confirms them and releases 500
    status = await one_pass(ctx, prom)  # the trainer has not carried it out yet: nothing new
    patches = ctx.kube.verbs("patch_status", "cptruns")
    assert len(patches) == 2, [sorted(p["status"]) for p in patches]
    assert set(patches[1]["status"]) < {"progress", "metrics", "evaluations", "checkpoints", "conditions", "bestCheckpoint", "halt", "phase"}
    assert "metrics" not in patches[1]["status"]  # the same values: updatedAt not moved either
    assert [r["step"] for r in status["checkpoints"] if r["deleted"]] == [500]
    prom.steps = [1000, 1500, 2000]  # the trainer deleted 500 and saved 2000
    await one_pass(ctx, prom)
    changed = ctx.kube.verbs("patch_status", "cptruns")[-1]["status"]
    assert "checkpoints" in changed and "phase" not in changed and "halt" not in changed


# --------------------------------------------------------------------------- pagination


async def test_paginate_follows_continue_tokens_as_the_api_server_sends_them():
    pages = {None: ([{"n": 1}, {"n": 2}], "t1"), "t1": ([{"n": 3}], "t2"), "t2": ([{"n": 4}], None)}
    asked: list[str | None] = []

    async def page(token: str | None):
        asked.append(token)
        return pages[token]

    assert [i["n"] for i in await kube.paginate(page)] == [1, 2, 3, 4]
    assert asked == [None, "t1", "t2"]

    async def repeating(token: str | None):
        return [{"n": 0}], "same"

    with pytest.raises(kube.KubeError, match="repeated its continue token"):
        await kube.paginate(repeating)

    async def endless(token: str | None):
        return [], f"{token}x"

    with pytest.raises(kube.KubeError, match="passed 5 pages"):
        await kube.paginate(endless, max_pages=5)


async def test_list_paginated_sends_limit_and_continue(monkeypatch: pytest.MonkeyPatch):
    client = kube.KubeClient(kube.ClusterConnection(server="http://127.0.0.1:1"))
    runs = [{"metadata": {"name": f"r{i}", "labels": {"a": "b"}}} for i in range(5)]
    requests: list[dict[str, str]] = []

    async def fake_request(method: str, path: str, verb: str, body: Any = None, params: dict[str, str] | None = None, **_: Any):
        assert (method, path, verb) == ("GET", kube.CPTRUNS.path(""), "list")
        requests.append(dict(params or {}))
        start = int((params or {}).get("continue") or 0)
        limit = int((params or {})["limit"])
        end = start + limit
        meta = {"continue": str(end)} if end < len(runs) else {}
        return 200, {"items": runs[start:end], "metadata": {"resourceVersion": "7", **meta}}

    monkeypatch.setattr(client, "_request", fake_request)
    got = await client.list_paginated(kube.CPTRUNS, "", {"a": "b"}, limit=2)
    assert [r["metadata"]["name"] for r in got] == [f"r{i}" for i in range(5)]
    assert requests == [{"limit": "2", "labelSelector": "a=b"}, {"limit": "2", "labelSelector": "a=b", "continue": "2"},
                        {"limit": "2", "labelSelector": "a=b", "continue": "4"}]  # fmt: skip


async def test_the_control_pass_lists_runs_in_pages(monkeypatch: pytest.MonkeyPatch):
    kube_ = cluster()
    listed: list[str] = []

    async def list_paginated(res: kube.Resource, ns: str, selector: Any = None) -> list[dict[str, Any]]:
        listed.append(res.plural)
        return []

    async def unpaginated(*a: Any, **k: Any) -> list[dict[str, Any]]:
        raise AssertionError("the control pass listed every run in one answer")

    kube_.list_paginated = list_paginated  # type: ignore[method-assign]
    kube_.list = unpaginated  # type: ignore[attr-defined]
    assert await control.control_pass(ctx_for(kube_), None) == 0
    assert listed == ["cptruns"]


# --------------------------------------------------------------------------- retain ConfigMap


def test_only_a_controller_reference_to_the_runs_uid_makes_it_the_runs():
    own = {"metadata": {"name": CM, "ownerReferences": [owner_reference("cpt.dev/v1alpha1", "CPTRun", RUN, UID)]}}
    assert controlled_by(own, UID) and foreign_retain_configmap(own, UID) is None
    assert foreign_retain_configmap(None, UID) is None
    not_controller = {"metadata": {"name": CM, "ownerReferences": [{**owner_reference("cpt.dev/v1alpha1", "CPTRun", RUN, UID), "controller": False}]}}
    older_run = {"metadata": {"name": CM, "ownerReferences": [owner_reference("cpt.dev/v1alpha1", "CPTRun", RUN, "an-older-uid")]}}
    for cm in ({"metadata": {"name": CM}}, not_controller, older_run):
        message = foreign_retain_configmap(cm, UID)
        assert message and message.startswith(f"ConfigMap {CM} exists and is not owned by this run") and "delete it" in message
    assert not controlled_by(own, "")


async def test_a_tenants_retain_configmap_is_not_patched_and_nothing_is_deleted():
    tenant_list = '{"keep": [], "decidedThroughStep": 999999999}\n'
    squatter = {"metadata": {"name": CM, "namespace": NS}, "data": {"retain.json": tenant_list}}
    ctx = ctx_for(cluster({("configmaps", NS, CM): squatter}))
    prom = ListingPrometheus([500, 1000, 1500, 2000])
    for _ in range(3):
        status = await one_pass(ctx, prom)
    assert ctx.kube.verbs("patch", "configmaps") == [] and ctx.kube.verbs("create", "configmaps") == []
    assert ctx.kube.objects[("configmaps", NS, CM)]["data"]["retain.json"] == tenant_list
    assert not any(r["deleted"] for r in status["checkpoints"])
    rotated = next(c for c in status["conditions"] if c["type"] == "CheckpointsRotated")
    assert (rotated["status"], rotated["reason"]) == ("False", RETAIN_LIST_NOT_OWNED)
    assert f"ConfigMap {CM} exists and is not owned by this run" in rotated["message"] and "delete it" in rotated["message"]
    events = ctx.kube.verbs("create", "events")
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", RETAIN_LIST_NOT_OWNED)]  # once
    # The tenant deletes it: the operator creates its own, and decides again.
    del ctx.kube.objects[("configmaps", NS, CM)]
    status = await one_pass(ctx, prom)
    created = ctx.kube.objects[("configmaps", NS, CM)]
    assert controlled_by(created, UID)
    assert [r["step"] for r in status["checkpoints"] if r["deleted"]] == [500, 1000]


async def test_a_retain_configmap_created_during_the_pass_is_not_patched_and_the_pass_records_nothing():
    ctx = ctx_for(cluster())
    prom = ListingPrometheus([500, 1000, 1500, 2000])
    await one_pass(ctx, prom)  # creates the run's own ConfigMap
    await one_pass(ctx, prom)
    rv = ctx.kube.objects[("cptruns", NS, RUN)]["metadata"]["resourceVersion"]
    # A tenant replaces it between the pass's read and its write.
    real_get = ctx.kube.get
    squatter = {"metadata": {"name": CM, "namespace": NS}, "data": {"retain.json": "{}"}}

    async def get_then_squat(res: kube.Resource, ns: str, name: str) -> dict[str, Any] | None:
        got = await real_get(res, ns, name)
        if res.plural == "configmaps":
            ctx.kube.objects[("configmaps", NS, CM)] = copy.deepcopy(squatter)
        return got

    ctx.kube.get = get_then_squat  # type: ignore[method-assign]
    ctx.retain_written.clear()
    prom.steps = [1500, 2000, 2500, 3000]
    await one_pass(ctx, prom)
    assert ctx.kube.objects[("configmaps", NS, CM)]["data"] == {"retain.json": "{}"}  # not patched
    assert ctx.kube.objects[("cptruns", NS, RUN)]["metadata"]["resourceVersion"] == rv  # no status written
    assert ctx.kube.verbs("create", "events")[-1]["reason"] == RETAIN_LIST_NOT_OWNED
