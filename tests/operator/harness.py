"""The emulated cluster and the in-process operator for integration tests and the benchmark.

Every emulator detail lives here: the resources declared with their verbs and
subresources (our CRDs from crds/, PyTorchJobs, Jobs, the core kinds Kopf needs), and
the metadata a real API server would fill in (uid, resourceVersion, generation,
creationTimestamp), which kmock's KubernetesEmulator leaves to the client.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import threading
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp.web
import attrs
import jsonpatch
import kmock
import kopf
import yaml

from cpt_operator.checkpoint_store import RunCheckpointsDeleter
from cpt_operator.handlers.context import OperatorContext, Tuning
from cpt_operator.kube import ClusterConnection, KubeClient
from cpt_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
CRD_FILES = ("cpt.dev_corpora.yaml", "cpt.dev_checkpointpolicies.yaml", "cpt.dev_cptruns.yaml")
VERBS = ["list", "watch", "get", "create", "patch", "update", "delete"]


def load_crds() -> list[dict[str, Any]]:
    """The three CRDs from crds/; fails loudly when one is missing (regenerate with crdgen)."""
    crds = []
    for name in CRD_FILES:
        path = CRD_DIR / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `python -m cpt_operator.api.crdgen`")
        crds.append(yaml.safe_load(path.read_text()))
    return crds


@attrs.frozen
class ResourceVersionConflict(kmock.KubernetesError):
    status: int = 409
    reason: str = "Conflict"
    message: str = "the object has been modified; please apply your changes to the latest version and try again"


def status_of(exc: BaseException) -> tuple[int, str, str]:
    """(code, reason, message) a real kube-apiserver answers for what went wrong here.

    kmock answers a failed JSON-patch `test` with 500 and uses its own reason strings; a real
    server answers 422 Invalid (apiserver endpoints/handlers/patch.go), and its reasons are
    metav1.StatusReason values, which clients (Kopf among them) act on.
    """
    if isinstance(exc, jsonpatch.JsonPatchException):
        return 422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
    if isinstance(exc, ResourceVersionConflict):
        return 409, "Conflict", exc.message
    if isinstance(exc, kmock.KubernetesError):
        name = type(exc).__name__
        if exc.status == 409:
            return 409, "AlreadyExists", "object already exists"
        if exc.status == 404 and "Object" in name:
            return 404, "NotFound", "object not found"
        if exc.status == 404:
            return 404, "NotFound", "the server could not find the requested resource"
        return exc.status, exc.reason or "InternalError", exc.message or repr(exc)
    return 500, "InternalError", f"Internal error occurred: {exc!r}"


class ClusterEmulator(kmock.KubernetesEmulator):
    """KubernetesEmulator plus the metadata an API server assigns, answering errors with the
    status codes and reasons a real API server gives (`status_of`)."""

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        code, reason, message = status_of(exc)
        body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}  # fmt: skip
        return aiohttp.web.json_response(body, status=code)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = itertools.count(1)

    async def _handle(self, request: kmock.Request) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            if request.action == kmock.action.CREATE:
                meta = data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta.setdefault("generation", 1)
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
                meta["resourceVersion"] = str(next(self._rv))
            elif request.action == kmock.action.UPDATE and request.name is not None:
                meta = data.setdefault("metadata", {}) if isinstance(data.get("metadata", {}), dict) else {}
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    old = self.objects[key]
                    # A patch naming a resourceVersion is a precondition, as on a real API server.
                    wanted = meta.get("resourceVersion")
                    if wanted is not None and str(wanted) != str((old.get("metadata") or {}).get("resourceVersion")):
                        raise ResourceVersionConflict()
                    if request.subresource is None and "spec" in data and data["spec"] != old.get("spec"):
                        meta["generation"] = int((old.get("metadata") or {}).get("generation") or 1) + 1
                meta["resourceVersion"] = str(next(self._rv))
        return await super()._handle(request)


def declare_resources(emulator: kmock.KubernetesEmulator, crds: list[dict[str, Any]]) -> None:
    def declare(key: str, kind: str, namespaced: bool = True, subresources: tuple[str, ...] = (), singular: str | None = None,
                shortnames: tuple[str, ...] = ()) -> None:  # fmt: skip
        emulator.resources[key] = kmock.ResourceInfo(
            kind=kind, singular=singular or kind.lower(), namespaced=namespaced, verbs=VERBS,
            subresources=list(subresources), shortnames=list(shortnames),
        )  # fmt: skip

    declare("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition", namespaced=False)
    declare("v1/namespaces", "Namespace", namespaced=False)
    declare("v1/events", "Event")
    declare("v1/secrets", "Secret")
    declare("v1/configmaps", "ConfigMap")
    declare("v1/pods", "Pod", subresources=("status",))
    declare("batch/v1/jobs", "Job", subresources=("status",))
    declare("kubeflow.org/v1/pytorchjobs", "PyTorchJob", subresources=("status",))
    declare("kopf.dev/v1/clusterkopfpeerings", "ClusterKopfPeering", namespaced=False)
    declare("kueue.x-k8s.io/v1beta1/workloads", "Workload", subresources=("status",))
    for crd in crds:
        spec = crd["spec"]
        version = spec["versions"][0]
        subs = tuple(version.get("subresources") or {})
        declare(f"{spec['group']}/{version['name']}/{spec['names']['plural']}", spec["names"]["kind"],
                subresources=subs, singular=spec["names"]["singular"], shortnames=tuple(spec["names"].get("shortNames", [])))  # fmt: skip
        meta = dict(crd["metadata"], uid=str(uuid.uuid4()), resourceVersion="1", generation=1,
                    creationTimestamp="2024-01-01T00:00:00Z")  # fmt: skip
        emulator.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, crd["metadata"]["name"]] = {**crd, "metadata": meta}


def test_settings() -> OperatorSettings:
    return OperatorSettings(
        node_pools=[
            {"name": "h100-80gb", "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
             "allowed_priority_classes": ["training-high"],  # for a run that sets the class
             "allowed_namespaces": ["*"]},  # the test platform opts every test namespace in
            {"name": "vip-pool", "allowed_namespaces": ["vip-*"]},
        ],
        allowed_trainer_images=["registry.example/cpt/*:*"],
    )  # fmt: skip


class RecordingCheckpointStore:
    """Records deletions, and whether the run's PyTorchJob still existed at that moment."""

    def __init__(self, client: KubeClient):
        self.client = client
        self.calls: list[tuple[str, str, bool]] = []
        self.prefixes: list[str] = []

    async def delete_run_checkpoints(self, target: Any) -> str:
        from cpt_operator import kube
        from cpt_operator.render.names import pytorchjob_name

        job_exists = await self.client.get(kube.PYTORCHJOBS, target.namespace, pytorchjob_name(target.run)) is not None
        self.calls.append((target.namespace, target.run, job_exists))
        self.prefixes.append(target.prefix)
        return "recorded"


class OperatorProcess:
    """The real Kopf operator (our handlers) in a thread with its own event loop, as
    KopfRunner does: Kopf cancels every task of its loop that it did not start, so it must
    not share the test's loop. Talks to the emulator over HTTP like a deployed operator."""

    def __init__(self, url: str = "", settings: OperatorSettings | None = None, store: RunCheckpointsDeleter | None = None,
                 tuning: Tuning | None = None, peering_priority: int | None = None,
                 connection: ClusterConnection | None = None, namespaces: list[str] | None = None):  # fmt: skip
        """With `peering_priority`, Kopf's cluster-wide peering is on (the ClusterKopfPeering
        `tuning.peering_name` must exist); otherwise the operator runs standalone. With
        `connection` (a real API server and an identity), `url` is ignored."""
        import cpt_operator.main  # noqa: F401  (registers the handlers)

        self.connection = connection or ClusterConnection(server=url)
        self.kube = KubeClient(self.connection)
        self.kube.calls = []
        self.ctx = OperatorContext(
            settings=settings or test_settings(), connection=self.connection, kube=self.kube,
            checkpoint_store=store,
            tuning=tuning or Tuning(retry_later_base=0.5, retry_later_cap=1.0),
            identity=f"test-operator-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
        self.peering_priority = peering_priority
        self.namespaces = namespaces  # namespaced scope (as `cpt-operator --namespace`); None: cluster-wide
        if namespaces:
            self.ctx.settings.watch_namespaces = list(namespaces)
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[None] | None = None
        self.stop_flag = threading.Event()
        self.ready = threading.Event()
        self.error: BaseException | None = None

    def _main(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def body() -> None:
            self.task = asyncio.current_task()  # type: ignore[assignment]
            peered = self.peering_priority is not None
            await kopf.operator(clusterwide=not self.namespaces, namespaces=self.namespaces or [], standalone=not peered, priority=self.peering_priority or 0,
                                identity=self.ctx.identity, memo=kopf.Memo(ctx=self.ctx),  # type: ignore[arg-type]
                                stop_flag=self.stop_flag, ready_flag=self.ready)  # fmt: skip

        try:
            self.loop.run_until_complete(body())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # noqa: BLE001  (reported by start/stop)
            self.error = exc
        finally:
            try:
                self.loop.run_until_complete(self.kube.close())
            finally:
                self.loop.close()

    async def start(self, timeout: float = 30) -> None:
        self.thread = threading.Thread(target=self._main, name="kopf-operator", daemon=True)
        self.thread.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.ready.is_set():
            if not self.thread.is_alive():
                raise RuntimeError(f"the operator exited during startup: {self.error!r}")
            if loop.time() > deadline:
                raise TimeoutError("the operator did not become ready")
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 30) -> None:
        if self.thread is None:
            return
        self.stop_flag.set()
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, timeout)
        self.thread = None
        if self.error is not None:
            raise self.error

    async def kill(self) -> None:
        """Stop abruptly, as a crash would: the operator's task is cancelled mid-work."""
        if self.thread is None:
            return
        if self.loop is not None and self.task is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        await asyncio.get_running_loop().run_in_executor(None, self.thread.join, 30)
        self.thread = None
        # Kopf waits for the stop flag in an executor thread; release it, or the interpreter
        # waits for that thread forever at exit.
        self.stop_flag.set()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `check` until it returns something truthy; fail with its last value after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while True:
        last = await check()
        if last:
            return last
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or check}; last value: {last!r}")
        await asyncio.sleep(interval)
