"""The emulator answers errors with a real API server's codes and reasons (harness.status_of).

Kopf and our client act on them: a failed JSON-patch precondition must be 422 Invalid (a
500 made Kopf retry a stale patch), a stale resourceVersion 409 Conflict, a duplicate
create 409 AlreadyExists, a missing object 404 NotFound.
"""

from __future__ import annotations

from cpt_operator import kube

JOB = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "j"}, "spec": {"runPolicy": {}}}


async def _request(client: kube.KubeClient, method: str, path: str, body, content_type: str = "application/json"):
    return await client._request(method, path, method.lower(), body=body, content_type=content_type)


async def test_failed_json_patch_test_is_422_invalid(client: kube.KubeClient, namespace: str) -> None:
    await client.create(kube.PYTORCHJOBS, namespace, {**JOB, "metadata": {"name": "j", "namespace": namespace}})
    patch = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}, {"op": "replace", "path": "/spec", "value": {}}]
    for sub in (None, "status"):
        code, data = await _request(client, "PATCH", kube.PYTORCHJOBS.path(namespace, "j", sub), patch, "application/json-patch+json")
        assert (code, data["reason"], data["code"]) == (422, "Invalid", 422), data


async def test_stale_resource_version_is_409_conflict(client: kube.KubeClient, namespace: str) -> None:
    await client.create(kube.PYTORCHJOBS, namespace, {**JOB, "metadata": {"name": "j", "namespace": namespace}})
    code, data = await _request(client, "PATCH", kube.PYTORCHJOBS.path(namespace, "j", "status"),
                                {"metadata": {"resourceVersion": "0"}, "status": {}}, "application/merge-patch+json")  # fmt: skip
    assert (code, data["reason"]) == (409, "Conflict"), data


async def test_duplicate_create_and_missing_object(client: kube.KubeClient, namespace: str) -> None:
    body = {**JOB, "metadata": {"name": "j", "namespace": namespace}}
    await client.create(kube.PYTORCHJOBS, namespace, body)
    code, data = await _request(client, "POST", kube.PYTORCHJOBS.path(namespace), body)
    assert (code, data["reason"]) == (409, "AlreadyExists"), data
    code, data = await _request(client, "GET", kube.PYTORCHJOBS.path(namespace, "missing"), None)
    assert (code, data["reason"]) == (404, "NotFound"), data
