"""Security review issue 12, storage: the operator's own cloud identity never reaches a tenant's
storage the platform did not grant, a tenant's endpoint gets no request (and so no credentials)
unless the platform allowlisted it, and one tenant's endpoint cannot stall the others' control
passes. Against moto's S3 server through boto3, and loopback HTTP servers standing in for a
hostile endpoint."""

from __future__ import annotations

import asyncio
import base64
import copy
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cpt_operator import kube
from cpt_operator.api.common import StorageLocation
from cpt_operator.api.resources import load_manifests
from cpt_operator.checkpoint_store import CheckpointsKept, RunCheckpoints
from cpt_operator.render.locations import run_prefix
from cpt_operator.control.prometheus import RunMetrics
from cpt_operator.control.storage import StorageRefused
from cpt_operator.handlers import control
from cpt_operator.handlers.deletion import ClusterCheckpointDeleter
from cpt_operator.handlers.stores import s3_store_for
from cpt_operator.settings import OperatorSettings
from cpt_trainer.contract import metrics as names

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
SHARED = "shared-ckpt"


def target(namespace: str, run: str, storage: Any) -> RunCheckpoints:
    """A deleted run's checkpoints at its uid-less prefix (<storage>/<namespace>/<run>)."""
    return RunCheckpoints(namespace, run, "", run_prefix(storage, namespace, run, "/mnt/cpt/pvc"), storage)


def storage(uri: str, endpoint: str | None, secret: bool = False) -> StorageLocation:
    s3: dict[str, Any] = {"uri": uri, "region": "us-east-1"}
    if endpoint:
        s3["endpoint"] = endpoint
    if secret:
        s3["credentialsSecret"] = {"name": "s3-creds"}
    return StorageLocation.model_validate({"s3": s3})


class FakeKube:
    """The few API calls the control pass and the store make, in memory."""

    def __init__(self, objects: dict[tuple[str, str, str], dict[str, Any]] | None = None):
        self.objects = objects or {}
        self.status_patches: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []

    async def get(self, res: kube.Resource, ns: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.objects.get((res.plural, ns, name)))

    async def list(self, res: kube.Resource, ns: str = "", selector: Any = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(v) for (plural, n, _), v in self.objects.items() if plural == res.plural and (not ns or n == ns)]

    list_paginated = list

    async def patch_status(self, res: kube.Resource, ns: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.status_patches[(ns, name)] = patch["status"]
        return {}

    async def create(self, res: kube.Resource, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        self.events.append(body)
        return body

    async def patch(self, *a: Any, **k: Any) -> dict[str, Any]:
        return {}


def ctx_for(settings: OperatorSettings, kube_: FakeKube | None = None) -> Any:
    return SimpleNamespace(settings=settings, kube=kube_ or FakeKube(), retain_written={})


def put_checkpoint(s3: Any, bucket: str, prefix: str, step: int) -> None:
    for leaf in ("model/weights.bin", "metrics.json", "COMPLETE"):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/step-{step:08d}/{leaf}", Body=b"{}")


def all_keys(s3: Any, bucket: str) -> list[str]:
    return sorted(o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in p.get("Contents", []))


@pytest.fixture
def shared(s3: Any) -> Any:
    """A bucket shared by tenants; namespace ml's run `prod` has checkpoint step-00000500."""
    s3.create_bucket(Bucket=SHARED)
    put_checkpoint(s3, SHARED, "ckpt/ml/prod", 500)
    yield s3
    for key in all_keys(s3, SHARED):
        s3.delete_object(Bucket=SHARED, Key=key)
    s3.delete_bucket(Bucket=SHARED)


# --------------------------------------------------------------------------- the operator's identity


async def test_without_a_secret_or_grant_the_operators_identity_deletes_nothing(shared: Any, s3_endpoint: str) -> None:
    """The review's attack: namespace prod, run step-00000500, prefix s3://shared-ckpt/ckpt/ml, no
    credentialsSecret, deleteWithRun; the operator's identity (AWS_* of its environment) could
    delete ml/prod/step-00000500. Now the store refuses before any request and the checkpoints stay."""
    before = all_keys(shared, SHARED)
    ctx = ctx_for(OperatorSettings(allowed_s3_endpoints=[s3_endpoint]))
    attack = storage(f"s3://{SHARED}/ckpt/ml", s3_endpoint)
    store = await s3_store_for(ctx, "prod", "step-00000500", attack)
    with pytest.raises(StorageRefused, match="storageGrants"):
        store.list_complete()
    with pytest.raises(CheckpointsKept, match="storageGrants"):
        await ClusterCheckpointDeleter(ctx).delete_run_checkpoints(target("prod", "step-00000500", attack))
    assert all_keys(shared, SHARED) == before


async def test_a_grant_admits_only_its_own_prefix_and_run_prefixes_never_overlap(shared: Any, s3_endpoint: str) -> None:
    grant = {"namespaces": ["prod", "ml"], "uri": f"s3://{SHARED}/ckpt", "endpoint": s3_endpoint}
    ctx = ctx_for(OperatorSettings(allowed_s3_endpoints=[s3_endpoint], storage_grants=[grant]))
    # The attack's prefix lies below the grant's (no {namespace} in it): refused.
    attack = storage(f"s3://{SHARED}/ckpt/ml", s3_endpoint)
    with pytest.raises(CheckpointsKept):
        await ClusterCheckpointDeleter(ctx).delete_run_checkpoints(target("prod", "step-00000500", attack))
    # On the granted prefix itself, run `step-00000500` of prod is ckpt/prod/step-00000500/: its own only.
    put_checkpoint(shared, SHARED, "ckpt/prod/step-00000500", 1000)
    put_checkpoint(shared, SHARED, "ckpt/prod/step-000005000", 1000)  # a neighbour whose name extends it
    shared.put_object(Bucket=SHARED, Key="ckpt/prod/step-00000500/notes.txt", Body=b"the tenant's own file")
    granted = storage(f"s3://{SHARED}/ckpt", s3_endpoint)
    message = await ClusterCheckpointDeleter(ctx).delete_run_checkpoints(target("prod", "step-00000500", granted))
    assert message.startswith("deleted 3 object(s)")
    remaining = all_keys(shared, SHARED)
    assert "ckpt/ml/prod/step-00000500/COMPLETE" in remaining
    assert "ckpt/prod/step-000005000/step-00001000/COMPLETE" in remaining
    assert "ckpt/prod/step-00000500/notes.txt" in remaining  # only step-NNNNNNNN children go
    assert not [k for k in remaining if k.startswith("ckpt/prod/step-00000500/step-")]
    # A namespace the grant does not name is refused on the same prefix.
    with pytest.raises(CheckpointsKept):
        await ClusterCheckpointDeleter(ctx).delete_run_checkpoints(target("other", "run", granted))


# --------------------------------------------------------------------------- endpoints


class Recorder(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RecordingHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.command, self.path, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_PUT = do_HEAD = do_DELETE = do_GET


@pytest.mark.parametrize("with_secret", [True, False])
async def test_an_endpoint_off_the_allowlist_gets_no_request(monkeypatch: pytest.MonkeyPatch, with_secret: bool) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOPERATOROWN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "operator-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "operator-session-token")
    evil = Recorder()
    try:
        secret = {"data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIATENANT").decode(),
                           "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"tenant").decode()}}  # fmt: skip
        kube_ = FakeKube({("secrets", "prod", "s3-creds"): secret})
        # Even a grant for the prefix does not admit an endpoint the allowlist lacks.
        grant = {"namespaces": ["*"], "uri": f"s3://{SHARED}/ckpt", "endpoint": evil.url}
        ctx = ctx_for(OperatorSettings(storage_grants=[grant]), kube_)
        loc = storage(f"s3://{SHARED}/ckpt", evil.url, secret=with_secret)
        store = await s3_store_for(ctx, "prod", "run", loc)
        with pytest.raises(StorageRefused, match="allowedS3Endpoints"):
            await asyncio.to_thread(store.list_complete)
        with pytest.raises(CheckpointsKept, match="allowedS3Endpoints"):
            await ClusterCheckpointDeleter(ctx).delete_run_checkpoints(target("prod", "run", loc))
        assert evil.requests == []
    finally:
        evil.shutdown()
        evil.server_close()


# --------------------------------------------------------------------------- one tenant stalls no one


class EndlessListing(ThreadingHTTPServer):
    """An "S3 endpoint" whose ListObjectsV2 is always truncated, with a fresh continuation token."""

    def __init__(self) -> None:
        self.lists = 0
        self.writes = 0
        super().__init__(("127.0.0.1", 0), EndlessHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class EndlessHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amz-request-id", "0")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        srv: EndlessListing = self.server  # type: ignore[assignment]
        if "list-type=2" not in self.path:
            return self._send(404, b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>")
        srv.lists += 1
        n = srv.lists
        prefix = "ckpt/stalled/run-a/"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
            f"<Name>{SHARED}</Name><Prefix>{prefix}</Prefix><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys>"
            f"<IsTruncated>true</IsTruncated><NextContinuationToken>token-{n}</NextContinuationToken>"
            f"<Contents><Key>{prefix}step-{n:08d}/COMPLETE</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
            '<ETag>"d41d8cd98f00b204e9800998ecf8427e"</ETag><Size>0</Size><StorageClass>STANDARD</StorageClass></Contents>'
            "</ListBucketResult>"
        ).encode()
        self._send(200, body)

    def do_POST(self) -> None:
        self.server.writes += 1  # type: ignore[attr-defined]
        self._send(500, b"<Error><Code>InternalError</Code><Message>no</Message></Error>")

    do_PUT = do_DELETE = do_POST


class FakePrometheus:
    last_latency = None

    def run_metrics(self, namespace: str, run: str, uid: str, window: float, step: float) -> RunMetrics:
        m = RunMetrics(newest_timestamp=time.time())
        m.values = {names.STEP.name: 1000, names.TOKENS_SEEN.name: 1000 * 2_097_152, names.TOKENS_PER_SECOND.name: 5e5}
        return m


async def test_an_endless_listing_stalls_only_its_own_run(s3: Any, s3_endpoint: str) -> None:
    res = {r.kind: r for r in load_manifests([REPO / "examples" / "legal-cpt"])}
    run_spec = res["CPTRun"].spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    policy_spec = res["CheckpointPolicy"].spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    endless = EndlessListing()
    try:
        secret = {"data": {"AWS_ACCESS_KEY_ID": base64.b64encode(b"test").decode(), "AWS_SECRET_ACCESS_KEY": base64.b64encode(b"test").decode()}}
        objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        for ns, endpoint, uri in (("stalled", endless.url, f"s3://{SHARED}/ckpt"), ("healthy", s3_endpoint, f"s3://{s3.bucket}/ckpt")):
            policy = copy.deepcopy(policy_spec)
            policy["storage"]["s3"].update({"uri": uri, "endpoint": endpoint, "region": "us-east-1"})
            policy["storage"]["s3"]["credentialsSecret"]["name"] = "s3-creds"
            pname = run_spec["checkpointPolicyRef"]["name"]
            objects[("checkpointpolicies", ns, pname)] = {"metadata": {"name": pname, "namespace": ns}, "spec": policy}
            objects[("secrets", ns, "s3-creds")] = secret
            objects[("cptruns", ns, "run-a")] = {
                "apiVersion": "cpt.dev/v1alpha1", "kind": "CPTRun",
                "metadata": {"name": "run-a", "namespace": ns, "uid": f"uid-{ns}", "generation": 1, "resourceVersion": "1"},
                "spec": run_spec, "status": {"phase": "Running"},
            }  # fmt: skip
        put_checkpoint(s3, s3.bucket, "ckpt/healthy/run-a", 500)
        kube_ = FakeKube(objects)
        settings = OperatorSettings(allowed_s3_endpoints=[endless.url, s3_endpoint], control_run_deadline_seconds=30)
        ctx = ctx_for(settings, kube_)
        started = time.monotonic()
        assert await asyncio.wait_for(control.control_pass(ctx, FakePrometheus()), timeout=60) == 2
        assert time.monotonic() - started < 30
    finally:
        endless.shutdown()
        endless.server_close()
    healthy = kube_.status_patches[("healthy", "run-a")]
    assert healthy["progress"]["step"] == 1000 and [c["step"] for c in healthy["checkpoints"]] == [500]
    stalled = kube_.status_patches[("stalled", "run-a")]
    rotated = next(c for c in stalled["conditions"] if c["type"] == "CheckpointsRotated")
    assert rotated["status"] == "False" and "passed 200 pages" in rotated["message"]
    assert endless.lists == 200 and endless.writes == 0  # capped, and nothing was deleted
    assert not stalled.get("checkpoints")


async def test_a_run_past_its_deadline_is_skipped_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that hangs (whatever in it) is cut at the run's deadline; the other run is done."""
    done: list[str] = []

    async def fake_control_run(ctx: Any, prom: Any, body: dict[str, Any]) -> None:
        if body["metadata"]["namespace"] == "hangs":
            await asyncio.sleep(3600)
        done.append(body["metadata"]["namespace"])

    monkeypatch.setattr(control, "control_run", fake_control_run)
    objects = {("cptruns", ns, "r"): {"apiVersion": "cpt.dev/v1alpha1", "kind": "CPTRun", "metadata": {"name": "r", "namespace": ns, "uid": ns},
                                      "status": {"phase": "Running"}} for ns in ("hangs", "fine")}  # fmt: skip
    kube_ = FakeKube(objects)
    ctx = ctx_for(OperatorSettings(control_run_deadline_seconds=0.5, control_concurrency=1), kube_)
    started = time.monotonic()
    assert await control.control_pass(ctx, None) == 2
    assert time.monotonic() - started < 5 and done == ["fine"]
    assert [e["reason"] for e in kube_.events] == ["ControlPassDeadlineExceeded"]
    assert kube_.events[0]["involvedObject"]["namespace"] == "hangs"
