"""deleteWithRun for real: the operator's own deleter against moto's S3 server (through boto3,
with the tenant's Secret) and, for a PVC, the cleanup Job it creates — whose exact argv the
test runs, as the kubelet would, on a folder standing in for the claim. Neighbouring runs'
checkpoints are never touched; a deletion that cannot happen keeps the checkpoints and tells
the tenant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from flows import apply_all, eventually, finish_curation, wait_object
from harness import OperatorProcess
from harness import test_settings as operator_settings
from loopback_servers import s3_endpoint  # noqa: F401  (fixture)
from manifests import apply, example, secret
from cpt_operator import kube
from cpt_operator.cleanup import Refused, confined_run_folder, delete_run_checkpoints
from cpt_operator.render.names import cleanup_job_name, pytorchjob_name

pytestmark = pytest.mark.timeout(120)
FINALIZER = "cpt.dev/delete-checkpoints"


def write_checkpoint(folder: Path, step: int) -> None:
    ck = folder / f"step-{step:08d}"
    (ck / "model").mkdir(parents=True)
    (ck / "model" / "weights.bin").write_bytes(b"w" * 32)
    (ck / "COMPLETE").write_text(f"{step}\n")


# --------------------------------------------------------------------------- the cleanup program


def test_cleanup_deletes_only_the_runs_step_folders(tmp_path: Path) -> None:
    run = tmp_path / "team-data" / "checkpoints" / "ns-a" / "run-1"
    for step in (500, 1000):
        write_checkpoint(run, step)
    (run / ".tmp-step-00001500").mkdir()
    neighbour = tmp_path / "team-data" / "checkpoints" / "ns-a" / "run-10"
    write_checkpoint(neighbour, 500)
    (run / "notes.txt").write_text("the tenant's own file")
    assert delete_run_checkpoints(confined_run_folder(str(tmp_path), str(run), "ns-a", "run-1")) == 3
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (neighbour / "step-00000500" / "COMPLETE").is_file()


@pytest.mark.parametrize(
    "folder",
    [
        "{root}/team-data/checkpoints/ns-a/other-run",  # not this run
        "{root}/team-data/checkpoints/ns-b/run-1",  # not this namespace
        "{root}/team-data/checkpoints/ns-a/run-1/../run-2/ns-a/run-1",
        "/etc/ns-a/run-1",  # outside the mount root
        "{root}/ns-a/run-1",  # the mount root itself, no claim
        "relative/team-data/ns-a/run-1",
    ],
)
def test_cleanup_refuses_any_other_folder(tmp_path: Path, folder: str) -> None:
    with pytest.raises(Refused):
        confined_run_folder(str(tmp_path), folder.format(root=tmp_path), "ns-a", "run-1")


def test_cleanup_refuses_a_symlinked_run_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_checkpoint(elsewhere, 500)
    link = tmp_path / "team-data" / "checkpoints" / "ns-a" / "run-1"
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    result = subprocess.run(
        [sys.executable, "-m", "cpt_operator.cleanup", "--mount-root", str(tmp_path), "--folder", str(link),
         "--namespace", "ns-a", "--run", "run-1", "--report", ""],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "symlink" in result.stderr
    assert (elsewhere / "step-00000500" / "COMPLETE").is_file()


# --------------------------------------------------------------------------- the operator


async def recorded_prefix(client: kube.KubeClient, ns: str, run: str) -> str:
    """status.checkpointStorage.uri: the run's own prefix, recorded when its job was created."""
    async def recorded() -> str | None:
        body = await client.get(kube.CPTRUNS, ns, run)
        return (((body or {}).get("status") or {}).get("checkpointStorage") or {}).get("uri")

    uri = await eventually(recorded, what="status.checkpointStorage")
    uid = (await client.get(kube.CPTRUNS, ns, run))["metadata"]["uid"]
    assert uri.endswith(f"/{ns}/{run}/{uid}"), uri  # the run's uid is part of it
    return str(uri)


async def start_pvc_run(client: kube.KubeClient, ns: str) -> str:
    """The minimal example (PVC storage) with deleteWithRun, its corpus curated, its job created;
    returns the run's recorded checkpoint folder."""
    objs = example("minimal", ns)
    objs["CheckpointPolicy/default"]["spec"]["deleteWithRun"] = True
    await apply_all(client, list(objs.values()))
    await finish_curation(client, ns, "docs")
    await wait_object(client, kube.PYTORCHJOBS, ns, pytorchjob_name("docs-cpt"))
    return await recorded_prefix(client, ns, "docs-cpt")


async def cleanup_job(client: kube.KubeClient, ns: str, run: str) -> dict[str, Any]:
    uid = (await client.get(kube.CPTRUNS, ns, run))["metadata"]["uid"]
    return await wait_object(client, kube.JOBS, ns, cleanup_job_name(run, uid), timeout=30)


async def start_s3_run(client: kube.KubeClient, ns: str, run: str, endpoint: str) -> str:
    """The legal example (S3 storage on `endpoint`, Secret AKIA / secret) with deleteWithRun;
    returns the run's recorded prefix's key part (below the bucket)."""
    objs = example("legal-cpt", ns)
    policy = objs["CheckpointPolicy/legal-keep-best"]["spec"]
    policy["deleteWithRun"] = True
    policy["storage"]["s3"]["endpoint"] = endpoint
    await apply(client, secret(ns))
    await apply_all(client, list(objs.values()))
    await finish_curation(client, ns, "legal-contracts")
    await finish_curation(client, ns, "general-replay")
    await wait_object(client, kube.PYTORCHJOBS, ns, pytorchjob_name(run))
    return (await recorded_prefix(client, ns, run)).removeprefix("s3://legal-team-checkpoints/")


def s3_settings(endpoint: str) -> Any:
    """The test settings with the moto endpoint on the platform's allowlist (allowedS3Endpoints)."""
    settings = operator_settings()
    settings.allowed_s3_endpoints = [endpoint]
    return settings


async def delete_and_wait_finalizer(client: kube.KubeClient, ns: str, run: str) -> None:
    async def finalized() -> bool:
        body = await client.get(kube.CPTRUNS, ns, run)
        return FINALIZER in (body["metadata"].get("finalizers") or [])

    await eventually(finalized, what="the finalizer")
    await client.delete(kube.CPTRUNS, ns, run)


async def gone(client: kube.KubeClient, ns: str, run: str, timeout: float = 30) -> None:
    async def absent() -> bool:
        return await client.get(kube.CPTRUNS, ns, run) is None

    await eventually(absent, timeout=timeout, what=f"CPTRun {ns}/{run} to be deleted")


async def events(client: kube.KubeClient, ns: str) -> list[str]:
    return [e.get("reason", "") for e in await client.list(kube.Resource("", "v1", "events"), ns)]


async def test_pvc_checkpoints_are_deleted_by_the_cleanup_job(cluster: Any, client: kube.KubeClient, tmp_path: Path) -> None:
    ns = "tenant-pvc-delete"
    settings = operator_settings()
    settings.pvc_mount_root = str(tmp_path / "mnt")  # where the claim is mounted in the cleanup pod
    neighbour = tmp_path / "mnt" / "team-data" / "checkpoints" / ns / "docs-cpt-2"
    write_checkpoint(neighbour, 500)
    # An earlier run of the same name, deleted with deleteWithRun false: its checkpoints stay.
    earlier = tmp_path / "mnt" / "team-data" / "checkpoints" / ns / "docs-cpt"
    write_checkpoint(earlier, 500)
    op = OperatorProcess(cluster[1], settings)
    await op.start()
    try:
        run_dir = Path(await start_pvc_run(client, ns))
        assert run_dir.parent == earlier
        for step in (500, 1000, 1500):
            write_checkpoint(run_dir, step)
        await delete_and_wait_finalizer(client, ns, "docs-cpt")

        job = await cleanup_job(client, ns, "docs-cpt")
        assert await client.get(kube.PYTORCHJOBS, ns, pytorchjob_name("docs-cpt")) is None  # the trainer was gone first
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        assert container["image"] == settings.cleanup_image
        assert pod["volumes"][0] == {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "team-data"}}
        assert "ownerReferences" not in job["metadata"]
        assert await client.get(kube.CPTRUNS, ns, "docs-cpt") is not None  # waits for the Job

        # The kubelet's part: run the container's exact argv (no shell), then report the Job complete.
        argv = [sys.executable if a == "python" else a for a in container["command"]] + ["--report", ""]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        await client.patch_status(kube.JOBS, ns, job["metadata"]["name"],
                                  {"status": {"conditions": [{"type": "Complete", "status": "True"}], "succeeded": 1}})  # fmt: skip
        await gone(client, ns, "docs-cpt")
    finally:
        await op.stop()
    assert not run_dir.exists()
    assert (neighbour / "step-00000500" / "COMPLETE").is_file()
    assert (earlier / "step-00000500" / "COMPLETE").is_file()
    assert "CheckpointsDeleted" in await events(client, ns)


async def test_a_failed_cleanup_job_keeps_the_checkpoints_and_releases_the_run(cluster: Any, client: kube.KubeClient) -> None:
    ns = "tenant-pvc-fail"
    op = OperatorProcess(cluster[1])
    await op.start()
    try:
        await start_pvc_run(client, ns)
        await delete_and_wait_finalizer(client, ns, "docs-cpt")
        job = await cleanup_job(client, ns, "docs-cpt")
        await client.patch_status(kube.JOBS, ns, job["metadata"]["name"], {"status": {"conditions": [{"type": "Failed", "status": "True"}]}})
        await gone(client, ns, "docs-cpt")
    finally:
        await op.stop()
    assert "CheckpointsNotDeleted" in await events(client, ns)


@pytest.fixture()
def bucket(s3_endpoint: str) -> Any:  # noqa: F811
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-1", aws_access_key_id="AKIA", aws_secret_access_key="secret")
    client.create_bucket(Bucket="legal-team-checkpoints", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="legal-team-checkpoints"):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket="legal-team-checkpoints", Key=obj["Key"])
    client.delete_bucket(Bucket="legal-team-checkpoints")


def keys(client: Any) -> list[str]:
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="legal-team-checkpoints"):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


async def test_s3_checkpoints_are_deleted_with_the_tenants_credentials(
    cluster: Any, client: kube.KubeClient, bucket: Any, s3_endpoint: str  # noqa: F811
) -> None:
    ns, run = "legal-team", "llama3-8b-legal"

    def put(prefix: str) -> None:
        for step in (500, 1000):
            for leaf in ("model/weights.bin", "metrics.json", "COMPLETE"):
                bucket.put_object(Bucket="legal-team-checkpoints", Key=f"{prefix}/step-{step:08d}/{leaf}", Body=b"x")

    put(f"cpt/{ns}/{run}-v2")  # the neighbour's prefix starts with this run's name
    put(f"cpt/{ns}/{run}")  # an earlier run of the same name (before uids were part of the prefix)
    put(f"cpt/{ns}/{run}/0000-earlier-uid")  # an earlier run of the same name
    bucket.put_object(Bucket="legal-team-checkpoints", Key=f"cpt/other-team/{run}/step-00000500/COMPLETE", Body=b"x")
    op = OperatorProcess(cluster[1], s3_settings(s3_endpoint))
    await op.start()
    try:
        prefix = await start_s3_run(client, ns, run, s3_endpoint)
        put(prefix)
        await delete_and_wait_finalizer(client, ns, run)
        await gone(client, ns, run)
    finally:
        await op.stop()
    remaining = keys(bucket)
    assert not [k for k in remaining if k.startswith(f"{prefix}/")]
    assert len([k for k in remaining if k.startswith(f"cpt/{ns}/{run}-v2/")]) == 6
    assert len([k for k in remaining if k.startswith(f"cpt/{ns}/{run}/step-")]) == 6
    assert len([k for k in remaining if k.startswith(f"cpt/{ns}/{run}/0000-earlier-uid/")]) == 6
    assert f"cpt/other-team/{run}/step-00000500/COMPLETE" in remaining
    assert "CheckpointsDeleted" in await events(client, ns)


async def test_s3_deletion_without_the_secret_keys_keeps_the_checkpoints(
    cluster: Any, client: kube.KubeClient, bucket: Any, s3_endpoint: str  # noqa: F811
) -> None:
    ns, run = "legal-team", "llama3-8b-legal"
    op = OperatorProcess(cluster[1], s3_settings(s3_endpoint))
    await op.start()
    try:
        prefix = await start_s3_run(client, ns, run, s3_endpoint)
        bucket.put_object(Bucket="legal-team-checkpoints", Key=f"{prefix}/step-00000500/COMPLETE", Body=b"x")
        # The tenant rotates the Secret and drops a key before deleting the run.
        await client.patch(kube.SECRETS, ns, "legal-team-s3", {"data": {"AWS_SECRET_ACCESS_KEY": None}})
        await delete_and_wait_finalizer(client, ns, run)
        await gone(client, ns, run)
    finally:
        await op.stop()
    assert keys(bucket) == [f"{prefix}/step-00000500/COMPLETE"]
    assert "CheckpointsNotDeleted" in await events(client, ns)
