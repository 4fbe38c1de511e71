"""deleteWithRun on a real API server: the finalizer, the PyTorchJob deleted first with
Foreground propagation (the real garbage collector finishes it), then the checkpoints on
moto's S3 server with the tenant's own Secret, then the finalizer released. Only the run's
own prefix (with its uid) goes, and only while the policy, read fresh, still promises what
was recorded when the job was created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from flows import REPORT, apply_all
from harness import eventually
from harness import test_settings as operator_settings
from integration_flows import LONG, operator_and_clients, play_kubelet, refused
from integration_setup import Identity
from loopback_servers import s3_endpoint  # noqa: F401  (fixture)
from manifests import example, secret

from cpt_operator import kube
from cpt_operator.render.names import LABEL_RUN_UID, cleanup_job_name, pytorchjob_name, run_labels

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


def put_run(bucket: Any, prefix: str) -> None:
    for step in (500, 1000):
        for leaf in ("model/weights.bin", "metrics.json", "COMPLETE"):
            bucket.put_object(Bucket=BUCKET, Key=f"{prefix}/step-{step:08d}/{leaf}", Body=b"x")


# What the tenant does between the run's start and its deletion, and whether the run's own
# checkpoints are deleted then. The policy is read fresh at deletion and must still promise
# what was recorded when the job was created.
CHANGES = {
    "nothing": (None, True),
    # deleteWithRun switched off just before the delete (status has not caught up).
    "deleteWithRun switched off": ({"deleteWithRun": False}, False),
    # The policy's storage moved elsewhere: a deletion never follows it.
    "storage moved": ({"storage": {"s3": {"uri": "s3://legal-team-checkpoints/elsewhere"}}}, False),
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_s3_checkpoints_are_deleted_with_the_run_only_as_recorded(
    identities: dict[str, Identity], namespace: str, bucket: Any, s3_endpoint: str, change: str,  # noqa: F811
) -> None:  # fmt: skip
    run = "llama3-8b-legal"
    policy_patch, deleted = CHANGES[change]
    put_run(bucket, f"cpt/{namespace}/{run}-v2")  # the neighbour's prefix starts with this run's name
    put_run(bucket, f"cpt/{namespace}/{run}")  # an earlier run of this name, from before uids were in the prefix
    put_run(bucket, f"cpt/{namespace}/{run}/0000-earlier-uid")  # an earlier run of this name
    settings = operator_settings()
    settings.allowed_s3_endpoints = [s3_endpoint]  # the platform's endpoint allowlist names moto's server
    async with operator_and_clients(identities, settings) as (answers, tenant, admin):
        objs = example("legal-cpt", namespace)
        policy = objs["CheckpointPolicy/legal-keep-best"]["spec"]
        policy["deleteWithRun"] = True
        policy["storage"]["s3"]["endpoint"] = s3_endpoint
        await tenant.create(kube.SECRETS, namespace, secret(namespace))
        await apply_all(tenant, list(objs.values()))  # as the tenant applies them
        await play_kubelet(admin, namespace, "legal-contracts", {"output_uri": "s3://legal-team-data/curated/contracts"})
        await play_kubelet(admin, namespace, "general-replay", {"output_uri": "s3://legal-team-data/curated/replay"})
        await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(run)), timeout=LONG, what="PyTorchJob")

        async def finalized_and_recorded() -> str | None:
            body = await tenant.get(kube.CPTRUNS, namespace, run)
            if FINALIZER not in (body["metadata"].get("finalizers") or []):
                return None
            return ((body.get("status") or {}).get("checkpointStorage") or {}).get("uri")

        uri = await eventually(finalized_and_recorded, timeout=LONG, what="the finalizer and status.checkpointStorage")
        uid = (await tenant.get(kube.CPTRUNS, namespace, run))["metadata"]["uid"]
        assert uri == f"s3://{BUCKET}/cpt/{namespace}/{run}/{uid}"
        prefix = uri.removeprefix(f"s3://{BUCKET}/")
        put_run(bucket, prefix)
        if policy_patch is not None:
            await tenant.patch(kube.CHECKPOINT_POLICIES, namespace, "legal-keep-best", {"spec": policy_patch})
        assert await tenant.delete(kube.CPTRUNS, namespace, run)

        async def run_gone() -> bool:
            return await tenant.get(kube.CPTRUNS, namespace, run) is None

        await eventually(run_gone, timeout=LONG, what="the run, once its checkpoints are deleted or kept")
        assert await admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(run)) is None
        reasons = [e.get("reason") for e in await admin.list(kube.Resource("", "v1", "events"), namespace)]
    remaining = keys(bucket)
    own = [k for k in remaining if k.startswith(f"{prefix}/")]
    assert len(own) == (0 if deleted else 6), remaining
    for other in (f"cpt/{namespace}/{run}-v2/", f"cpt/{namespace}/{run}/step-", f"cpt/{namespace}/{run}/0000-earlier-uid/"):
        assert len([k for k in remaining if k.startswith(other)]) == 6, (other, remaining)
    assert ("CheckpointsDeleted" if deleted else "CheckpointsNotDeleted") in reasons, reasons
    assert not refused(answers, namespace), "the chart's RBAC refused the operator"


def write_checkpoint(folder: Path, step: int) -> None:
    ck = folder / f"step-{step:08d}"
    (ck / "model").mkdir(parents=True)
    (ck / "model" / "weights.bin").write_bytes(b"w" * 32)
    (ck / "COMPLETE").write_text(f"{step}\n")


async def finish_pods(admin: kube.KubeClient, namespace: str, job_name: str, run_argv: bool) -> None:
    """The kubelet's part for the cleanup Job's pod: run the container's exact argv (no shell)
    on the folder standing in for the claim, then report the pod Succeeded; the real Job
    controller completes the Job."""
    pods = await eventually(lambda: admin.list(kube.PODS, namespace, {"job-name": job_name}), timeout=LONG, what="the cleanup pod")
    pod = pods[0]
    container = pod["spec"]["containers"][0]
    if run_argv:
        argv = [sys.executable if a == "python" else a for a in container["command"]] + ["--report", ""]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
    now = "2026-01-01T00:00:00Z"
    await admin.patch_status(kube.PODS, namespace, pod["metadata"]["name"], {"status": {"phase": "Succeeded", "containerStatuses": [{
        "name": container["name"], "image": container["image"], "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}}}]}})  # fmt: skip


@pytest.mark.parametrize("lookalike", [False, True])
async def test_pvc_checkpoints_go_through_the_cleanup_job_the_run_recorded(identities: dict[str, Identity], namespace: str,
                                                                        tmp_path: Path, lookalike: bool) -> None:  # fmt: skip
    run = "docs-cpt"
    settings = operator_settings()
    settings.pvc_mount_root = str(tmp_path / "mnt")  # where the claim is mounted in the cleanup pod
    base = tmp_path / "mnt" / "team-data" / "checkpoints" / namespace / run
    write_checkpoint(base, 500)  # an earlier run of this name, from before uids were in the prefix
    async with operator_and_clients(identities, settings) as (answers, tenant, admin):
        objs = example("minimal", namespace)
        objs["CheckpointPolicy/default"]["spec"]["deleteWithRun"] = True
        await apply_all(tenant, list(objs.values()))
        await play_kubelet(admin, namespace, "docs", REPORT)
        await eventually(lambda: admin.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(run)), timeout=LONG, what="PyTorchJob")

        async def recorded() -> str | None:
            body = await tenant.get(kube.CPTRUNS, namespace, run)
            if FINALIZER not in (body["metadata"].get("finalizers") or []):
                return None
            return ((body.get("status") or {}).get("checkpointStorage") or {}).get("uri")

        folder = Path(await eventually(recorded, timeout=LONG, what="the finalizer and status.checkpointStorage"))
        uid = (await tenant.get(kube.CPTRUNS, namespace, run))["metadata"]["uid"]
        assert folder == base / uid
        for step in (500, 1000):
            write_checkpoint(folder, step)
        job_name = cleanup_job_name(run, uid)
        if lookalike:  # the tenant makes a Job of that name first, labelled like the operator's
            labels = {**run_labels(namespace, run, "cleanup"), LABEL_RUN_UID: uid}
            await tenant.create(kube.JOBS, namespace, {"apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": job_name, "namespace": namespace, "labels": labels},
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}})  # fmt: skip
        assert await tenant.delete(kube.CPTRUNS, namespace, run)
        if lookalike:
            await finish_pods(admin, namespace, job_name, run_argv=False)  # "succeeds" without deleting anything
        else:
            job = await eventually(lambda: admin.get(kube.JOBS, namespace, job_name), timeout=LONG, what="the cleanup Job")
            rec = await eventually(lambda: _cleanup_record(tenant, namespace, run), timeout=LONG, what="status.cleanupJob")
            assert rec == {"name": job_name, "uid": job["metadata"]["uid"]}
            await finish_pods(admin, namespace, job_name, run_argv=True)

        async def run_gone() -> bool:
            return await tenant.get(kube.CPTRUNS, namespace, run) is None

        await eventually(run_gone, timeout=LONG, what="the run, once its checkpoints are deleted or kept")
        reasons = [e.get("reason") for e in await admin.list(kube.Resource("", "v1", "events"), namespace)]
    assert (base / "step-00000500" / "COMPLETE").is_file()  # the earlier run's checkpoint stays either way
    if lookalike:
        assert (folder / "step-00001000" / "COMPLETE").is_file() and "CheckpointsNotDeleted" in reasons, reasons
    else:
        assert not folder.exists() and "CheckpointsDeleted" in reasons, reasons
    assert not refused(answers, namespace), "the chart's RBAC refused the operator"


async def _cleanup_record(client: kube.KubeClient, namespace: str, run: str) -> dict[str, Any] | None:
    body = await client.get(kube.CPTRUNS, namespace, run)
    return ((body or {}).get("status") or {}).get("cleanupJob")
