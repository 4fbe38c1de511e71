"""deleteWithRun on a real API server: the finalizer, the PyTorchJob deleted first with
Foreground propagation (the real garbage collector finishes it), then the checkpoints on
moto's S3 server with the tenant's own Secret, then the finalizer released."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from flows import apply_all
from harness import OperatorProcess, eventually
from harness import test_settings as operator_settings
from integration_flows import LONG, play_kubelet, record_answers
from integration_setup import Identity
from loopback_servers import s3_endpoint  # noqa: F401  (fixture)
from manifests import example, secret

from cpt_operator import kube
from cpt_operator.render.names import pytorchjob_name

pytestmark = pytest.mark.timeout(300)
FINALIZER = "cpt.dev/delete-checkpoints"
BUCKET = "legal-team-checkpoints"


@pytest.fixture()
def bucket(s3_endpoint: str) -> Any:  # noqa: F811
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-1", aws_access_key_id="AKIA", aws_secret_access_key="secret")
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


def keys(client: Any) -> list[str]:
    return sorted(o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET) for o in page.get("Contents", []))


async def test_s3_checkpoints_are_deleted_with_the_run(identities: dict[str, Identity], namespace: str, bucket: Any,
                                                       s3_endpoint: str) -> None:  # noqa: F811  # fmt: skip
    run = "llama3-8b-legal"
    for name in (run, run + "-v2"):  # the neighbour's prefix starts with this run's name
        for step in (500, 1000):
            for leaf in ("model/weights.bin", "metrics.json", "COMPLETE"):
                bucket.put_object(Bucket=BUCKET, Key=f"cpt/{namespace}/{name}/step-{step:08d}/{leaf}", Body=b"x")
    settings = operator_settings()
    settings.allowed_s3_endpoints = [s3_endpoint]  # the platform's endpoint allowlist names moto's server
    op = OperatorProcess(connection=identities["operator"].connection(), settings=settings)
    answers = record_answers(op)
    tenant = kube.KubeClient(identities["tenant-a"].connection(), user_agent="tenant-a")
    admin = kube.KubeClient(identities["admin"].connection(), user_agent="test-admin")
    await op.start(timeout=LONG)
    try:
        objs = example("legal-cpt", namespace)
        policy = objs["CheckpointPolicy/legal-keep-best"]["spec"]
        policy["deleteWithRun"] = True
        policy["storage"]["s3"]["endpoint"] = s3_endpoint
        await tenant.create(kube.SECRETS, namespace, secret(namespace))
        await apply_all(tenant, list(objs.values()))  # as the tenant applies them
        await play_kubelet(admin, namespace, "legal-contracts", {"output_uri": "s3://legal-team-data/curated/contracts"})
        await play_kubelet(admin, namespace, "general-replay", {"output_uri": "s3://legal-team-data/curated/replay"})
        await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(run)), timeout=LONG, what="PyTorchJob")

        async def finalized() -> bool:
            body = await tenant.get(kube.CPTRUNS, namespace, run)
            return FINALIZER in (body["metadata"].get("finalizers") or [])

        await eventually(finalized, timeout=LONG, what="the deleteWithRun finalizer")
        assert await tenant.delete(kube.CPTRUNS, namespace, run)

        async def run_gone() -> bool:
            return await tenant.get(kube.CPTRUNS, namespace, run) is None

        await eventually(run_gone, timeout=LONG, what="the run, once its checkpoints are deleted")
        assert await admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(run)) is None
        reasons = [e.get("reason") for e in await admin.list(kube.Resource("", "v1", "events"), namespace)]
    finally:
        await op.stop()
        await tenant.close()
        await admin.close()
    remaining = keys(bucket)
    assert not [k for k in remaining if k.startswith(f"cpt/{namespace}/{run}/")], remaining
    assert len([k for k in remaining if k.startswith(f"cpt/{namespace}/{run}-v2/")]) == 6
    assert "CheckpointsDeleted" in reasons, reasons
    assert not [a for a in answers if a[2] == 403], "the chart's RBAC refused the operator"
