"""The chart's `rbac.scope: namespaces`: the operator watches only the listed namespaces with
Roles there (and a ClusterRole only for what is cluster-scoped), and that is enough: every
request it makes is allowed. A run in a namespace it does not watch is left alone."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from flows import apply_all, wait_phase
from harness import OperatorProcess, eventually
from integration_flows import LONG, play_kubelet, record_answers, refused, refused_logs
from integration_setup import Identity, apply_chart_rbac

from cpt_operator import kube
from cpt_operator.render.names import curation_job_name, pytorchjob_name
from manifests import example

pytestmark = pytest.mark.timeout(300)


@pytest.fixture()
def namespaced_rbac(admin: Identity, namespace: str, installed: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The namespaced render applied, and the cluster render's grants withdrawn, for this test only."""
    objs = apply_chart_rbac(admin, {"rbac": {"scope": "namespaces", "watchNamespaces": [namespace]}})
    kept = {(o["kind"], o["metadata"]["name"]) for o in objs}
    withdrawn = [o for o in installed if o["kind"] in ("ClusterRole", "ClusterRoleBinding") and (o["kind"], o["metadata"]["name"]) not in kept]
    for o in withdrawn:
        assert admin.delete(o["apiVersion"], o["kind"], o["metadata"]["name"]) in (200, 202)
    yield objs
    for o in installed:  # the cluster scope again, for the other tests
        admin.apply(o, namespace=o["metadata"].get("namespace") or "cpt-system")


async def test_namespaced_operator_runs_with_only_the_namespaced_rbac(identities: dict[str, Identity], namespace: str, admin: Identity,
                                                                      namespaced_rbac: Any, kopf_errors: Any) -> None:  # fmt: skip
    assert any(o["kind"] == "Role" and o["metadata"]["namespace"] == namespace for o in namespaced_rbac)
    elsewhere = f"{namespace[:45]}-unwatched"
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": elsewhere}})
    op = OperatorProcess(connection=identities["operator"].connection(), namespaces=[namespace])
    answers = record_answers(op)
    adm = kube.KubeClient(admin.connection(), user_agent="test-admin")
    await op.start(timeout=LONG)
    try:
        for ns in (namespace, elsewhere):
            objs = example("minimal", ns)
            await apply_all(adm, list(objs.values()))  # as the tenant applies them
        await play_kubelet(adm, namespace, "docs", {"documents": 10})
        await eventually(lambda: adm.get(kube.PYTORCHJOBS, namespace, pytorchjob_name("docs-cpt")), timeout=LONG, what="PyTorchJob")
        await wait_phase(adm, kube.CPTRUNS, namespace, "docs-cpt", "Starting", timeout=LONG)
        # Not watched: no curation Job, no status.
        assert await adm.get(kube.JOBS, elsewhere, curation_job_name("docs")) is None
        assert not ((await adm.get(kube.CPTRUNS, elsewhere, "docs-cpt")).get("status") or {})
    finally:
        await op.stop()
        await adm.close()
    assert answers
    assert not refused(answers, namespace), refused(answers, namespace)
    assert not refused_logs(kopf_errors.records, namespace), refused_logs(kopf_errors.records, namespace)
