"""Security review, issue 12: what a tenant's spec may ask of the platform.

Priority classes and tolerations only within what the run's node pool grants; curation Jobs
under the platform's curation limits (namespace, parallelism, GPUs, pool, Kueue label); image
patterns whose `*` stays inside one path component, tag or digest part. Pure checks and
renders, then the real Kopf operator against the emulator: a refused spec gets a condition and
nothing is created.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from flows import apply_all, condition, status_of
from harness import OperatorProcess, eventually
from manifests import example

from cpt_operator import kube
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.decide import checks
from cpt_operator.render.curation_job import render_curation_job
from cpt_operator.render.names import KUEUE_QUEUE_LABEL, curation_job_name, pytorchjob_name
from cpt_operator.settings import CurationSettings, NodePool, OperatorSettings, image_pattern_matches

POOL = NodePool(
    name="h100", node_selector={"pool": "h100"},
    tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    allowed_priority_classes=["training-high"], allowed_toleration_keys=["example.com/maintenance"],
)  # fmt: skip
BARE = NodePool(name="bare")  # the defaults: no priority class, no extra toleration


def run_spec(**resources: Any) -> CPTRunSpec:
    body = copy.deepcopy(example("minimal", "ns")["CPTRun/docs-cpt"]["spec"])
    body["resources"].update(resources)
    return CPTRunSpec.model_validate(body)


def corpus_spec(**changes: Any) -> CorpusSpec:
    body = copy.deepcopy(example("minimal", "ns")["Corpus/docs"]["spec"])
    for key, value in changes.items():
        if key == "gpu":
            body.setdefault("resources", {})["gpu"] = value
        else:
            body[key] = value
    return CorpusSpec.model_validate(body)


# ---------------------------------------------------------------- 1. priority classes


@pytest.mark.parametrize("pool", [POOL, BARE])
def test_system_priority_class_is_refused(pool: NodePool) -> None:
    refusal = checks.check_scheduling(run_spec(priorityClassName="system-node-critical"), pool)
    assert refusal is not None and refusal.reason == checks.PRIORITY_CLASS_NOT_ALLOWED
    assert "system-node-critical" in refusal.message and "spec.resources.priorityClassName" in refusal.message


def test_default_pool_grants_no_priority_class_and_granted_one_passes() -> None:
    assert NodePool(name="p").allowed_priority_classes == []
    assert checks.check_scheduling(run_spec(priorityClassName="training-high"), BARE) is not None
    assert checks.check_scheduling(run_spec(priorityClassName="training-high"), POOL) is None
    assert checks.check_scheduling(run_spec(), BARE) is None


# ---------------------------------------------------------------- 2. tolerations


@pytest.mark.parametrize("toleration", [
    {"operator": "Exists"},                                   # tolerates every taint
    {"operator": "Exists", "effect": "NoSchedule"},           # every NoSchedule taint: other pools, cordons
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists"},  # cordoned nodes
    {"key": "pool", "operator": "Equal", "value": "vip", "effect": "NoSchedule"},  # another pool's taint
])  # fmt: skip
def test_escaping_tolerations_are_refused(toleration: dict[str, Any]) -> None:
    for pool in (POOL, BARE, POOL.model_copy(update={"allowed_toleration_keys": ["pool", "node.kubernetes.io/unschedulable"]})):
        if toleration.get("key") and toleration["key"] in pool.allowed_toleration_keys:
            continue  # granted explicitly by the platform
        refusal = checks.check_scheduling(run_spec(tolerations=[toleration]), pool)
        assert refusal is not None and refusal.reason == checks.TOLERATION_NOT_ALLOWED, (toleration, pool.name)


def test_keyless_exists_is_refused_even_when_keys_are_granted() -> None:
    pool = POOL.model_copy(update={"allowed_toleration_keys": ["*", ""]})
    assert checks.check_scheduling(run_spec(tolerations=[{"operator": "Exists"}]), pool).reason == checks.TOLERATION_NOT_ALLOWED


def test_pool_own_and_granted_tolerations_pass() -> None:
    own = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    granted = {"key": "example.com/maintenance", "operator": "Exists", "effect": "NoExecute"}
    assert checks.check_scheduling(run_spec(tolerations=[own, granted]), POOL) is None
    assert checks.check_scheduling(run_spec(tolerations=[granted]), BARE).reason == checks.TOLERATION_NOT_ALLOWED


# ---------------------------------------------------------------- 3. curation limits


def test_curation_of_2048_gpus_is_refused_by_default() -> None:
    pool, refusal = checks.check_curation(corpus_spec(parallelism=256, gpu=8), "team-a", OperatorSettings())
    assert pool is None and refusal.reason == checks.CURATION_EXCEEDS_LIMITS and "256" in refusal.message
    _, refusal = checks.check_curation(corpus_spec(parallelism=4, gpu=8), "team-a", OperatorSettings())
    assert refusal.reason == checks.CURATION_EXCEEDS_LIMITS and "gpu" in refusal.message  # default: CPU-only curation
    assert checks.check_curation(corpus_spec(parallelism=4), "team-a", OperatorSettings()) == (None, None)


def test_curation_namespace_and_gpu_pool_checks() -> None:
    vip = NodePool(name="vip", allowed_namespaces=["vip-*"], gpus_per_node=4, gpu_resource="amd.com/gpu",
                   node_selector={"pool": "vip"}, tolerations=[{"key": "pool", "operator": "Equal", "value": "vip"}])  # fmt: skip
    settings = OperatorSettings(node_pools=[vip], curation=CurationSettings(
        allowed_namespaces=["team-*", "vip-*"], max_parallelism=8, max_gpus_per_pod=8, gpu_node_pool="vip", queue_name="curation"))  # fmt: skip
    assert checks.check_curation(corpus_spec(), "other", settings)[1].reason == checks.CURATION_NOT_ALLOWED
    assert checks.check_curation(corpus_spec(gpu=1), "team-a", settings)[1].reason == checks.CURATION_NOT_ALLOWED  # pool's namespaces
    assert checks.check_curation(corpus_spec(gpu=8), "vip-a", settings)[1].reason == checks.CURATION_EXCEEDS_LIMITS  # 4 per node
    pool, refusal = checks.check_curation(corpus_spec(gpu=2, parallelism=8), "vip-a", settings)
    assert refusal is None and pool is vip
    job = render_curation_job("vip-a", "c", "uid", corpus_spec(gpu=2, parallelism=8), settings, "{}", pool)
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "vip"} and pod["tolerations"] == vip.tolerations
    assert pod["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "2"
    assert job["metadata"]["labels"][KUEUE_QUEUE_LABEL] == "curation" and job["spec"]["suspend"] is True


def test_curation_job_without_queue_is_unlabelled_and_unsuspended() -> None:
    job = render_curation_job("ns", "c", "uid", corpus_spec(), OperatorSettings(), "{}")
    assert KUEUE_QUEUE_LABEL not in job["metadata"]["labels"] and "suspend" not in job["spec"]
    assert "nodeSelector" not in job["spec"]["template"]["spec"]


# ---------------------------------------------------------------- 4. image patterns


@pytest.mark.parametrize("pattern,image,ok", [
    ("trainer*", "trainer-tenant-pushed:latest", False),       # the review's case: `*` crossed `:`
    ("trainer*", "trainer-v2", True),
    ("reg.io/cpt/*", "reg.io/cpt/tenant/evil", False),          # `*` does not cross `/`
    ("reg.io/cpt/*", "reg.io/cpt/trainer:1", False),
    ("reg.io/cpt/*:*", "reg.io/cpt/trainer:1", True),
    ("reg.io/cpt/*:*", "reg.io/cpt/x/trainer:1", False),
    ("reg.io/cpt/trainer:*", "reg.io/cpt/trainer:1.2", True),
    ("reg.io/cpt/trainer:*", "reg.io/cpt/trainer:1@sha256:abc", False),
    ("reg.io/cpt/trainer@sha256:*", "reg.io/cpt/trainer@sha256:0123ab", True),
    ("reg.io/cpt/trainer:1.?", "reg.io/cpt/trainer:1.2", True),
    ("reg.io/cpt/trainer:1.?", "reg.io/cpt/trainer:1:", False),
    ("reg.io/cpt/[ab]*", "reg.io/cpt/a", False),                # `[` is literal
    ("reg.io/cpt/trainer.*", "reg.io/cpt/trainerX1", False),    # `.` is literal
])  # fmt: skip
def test_image_pattern_language(pattern: str, image: str, ok: bool) -> None:
    assert image_pattern_matches(image, pattern) is ok
    assert OperatorSettings(allowed_trainer_images=[pattern]).image_allowed(image) is ok


# ---------------------------------------------------------------- the real operator


@pytest.fixture()
async def operator(cluster: Any) -> Any:
    op = OperatorProcess(cluster[1])
    await op.start()
    yield op
    await op.stop()


async def _refused(client: kube.KubeClient, res: kube.Resource, ns: str, name: str) -> dict[str, Any]:
    async def check() -> Any:
        st = await status_of(client, res, ns, name)
        return st if condition(st, "Accepted").get("status") == "False" else None

    return await eventually(check, what=f"{res.plural} {ns}/{name} Accepted=False")


@pytest.mark.timeout(90)
async def test_operator_refuses_preemption_escape_and_giant_curation(operator: Any, client: kube.KubeClient, namespace: str) -> None:
    objs = example("minimal", namespace)
    objs["CPTRun/docs-cpt"]["spec"]["resources"]["priorityClassName"] = "system-node-critical"
    objs["Corpus/docs"]["spec"]["parallelism"] = 256
    objs["Corpus/docs"]["spec"].setdefault("resources", {})["gpu"] = 8
    escape = copy.deepcopy(objs["CPTRun/docs-cpt"])
    escape["metadata"]["name"] = "escape"
    escape["spec"]["resources"].pop("priorityClassName")
    escape["spec"]["resources"]["tolerations"] = [{"operator": "Exists"}]
    await apply_all(client, [*objs.values(), escape])

    run = await _refused(client, kube.CPTRUNS, namespace, "docs-cpt")
    assert condition(run, "Accepted")["reason"] == checks.PRIORITY_CLASS_NOT_ALLOWED
    assert "system-node-critical" in condition(run, "Accepted")["message"] and run["phase"] == "Pending"
    run = await _refused(client, kube.CPTRUNS, namespace, "escape")
    assert condition(run, "Accepted")["reason"] == checks.TOLERATION_NOT_ALLOWED
    corpus = await _refused(client, kube.CORPORA, namespace, "docs")
    assert condition(corpus, "Accepted")["reason"] == checks.CURATION_EXCEEDS_LIMITS
    assert condition(corpus, "Ready")["status"] == "False"

    await asyncio.sleep(0.5)  # nothing was created meanwhile, nor later
    assert await client.get(kube.JOBS, namespace, curation_job_name("docs")) is None
    for name in ("docs-cpt", "escape"):
        assert await client.get(kube.PYTORCHJOBS, namespace, pytorchjob_name(name)) is None


def test_a_pool_and_curation_allow_no_namespace_until_the_platform_names_one() -> None:
    """Least privilege by default: a pool or curation block in the settings without
    allowedNamespaces admits no namespace (the chart's defaults are the same)."""
    pool = NodePool(name="h100")
    assert pool.allowed_namespaces == [] and not pool.allows("team-a")
    refused_pool, refusal = checks.check_pool(run_spec(), "team-a", OperatorSettings(node_pools=[NodePool(name="h100-80gb")]))
    assert refused_pool is None and refusal is not None and refusal.reason == "NodePoolNotAllowed"
    assert CurationSettings().allowed_namespaces == []


@pytest.mark.parametrize("path,allowed", [
    ("/proc", False),  # the pod's own environment (S3 keys included) through include: [self/environ]
    ("/etc/cpt-operator", False),  # the image's own configuration
    ("/opt/data-other", False),  # a sibling whose name extends the root
    ("/opt/data", True),
    ("/opt/data/corpus", True),
])  # fmt: skip
def test_local_locations_only_below_the_roots_the_platform_allows(path: str, allowed: bool) -> None:
    settings = OperatorSettings(allowed_local_roots=["/opt/data"])
    corpus = copy.deepcopy(example("minimal", "ns")["Corpus/docs"]["spec"])
    corpus["sources"][0]["location"] = {"local": {"path": path}}
    corpus["sources"][0]["include"] = ["self/environ"]
    refusal = checks.check_local_paths(checks.corpus_locations(CorpusSpec.model_validate(corpus)), settings)
    assert (refusal is None) == allowed, refusal
    if not allowed:
        assert refusal.reason == "LocalPathNotAllowed" and "allowedLocalRoots" in refusal.message
    run = copy.deepcopy(example("minimal", "ns")["CPTRun/docs-cpt"]["spec"])
    run["baseModel"]["location"] = {"local": {"path": path}}
    assert (checks.check_local_paths(checks.run_local_locations(CPTRunSpec.model_validate(run)), settings) is None) == allowed
    assert checks.check_local_paths(checks.run_local_locations(CPTRunSpec.model_validate(run)), OperatorSettings()) is not None
    bench = copy.deepcopy(example("minimal", "ns")["CPTRun/docs-cpt"]["spec"])
    bench.setdefault("evaluation", {})["generalEvals"] = [
        {"name": "cloze", "kind": "lmEvalHarness", "taskFile": {"local": {"path": path}}}]  # fmt: skip
    refusal = checks.check_local_paths(checks.run_local_locations(CPTRunSpec.model_validate(bench)), settings)
    assert (refusal is None) == allowed, refusal
    if not allowed:
        assert "spec.evaluation.generalEvals[0].taskFile.local.path" in refusal.message
