"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
on loopback, built from upstream Go modules by tests/cluster/controlplane (our own small
program). There is no scheduler and no kubelet: Pods are created but never run.

    cluster = real_cluster.start()          # builds (incremental) and starts, once per process
    cluster.kubeconfig("tenant-a")           # path of a kubeconfig file per identity
    real_cluster.start_kueue()               # optional: Kueue's manager, CRDs and webhooks
    real_cluster.start_training_operator()   # optional: the PyTorchJob controller, CRD and webhook
    real_cluster.stop()                      # everything started here, add-ons first

Identities (static tokens): admin (system:masters), operator
(system:serviceaccount:cpt-system:cpt-operator), tenant-a and tenant-b (no rights until a
test grants some). Binaries go to .cluster/bin/ (shared with `make cluster`); a cold build
takes minutes on 2 cores, a warm one a second or two. A failing build or start fails loudly
with the tail of its output; nothing is skipped.

Set CPT_CLUSTER_DIR to the state dir of a control plane that is already running (`make
cluster` uses .cluster/) to reuse it instead of starting one; it is then left running.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_GO = ROOT / "tests" / "cluster"
BIN_DIR = ROOT / ".cluster" / "bin"
BINARY = BIN_DIR / "controlplane"
IDENTITIES = ("admin", "operator", "tenant-a", "tenant-b")
OPERATOR_USER = "system:serviceaccount:cpt-system:cpt-operator"
KUEUE_MODULE = "sigs.k8s.io/kueue"
TRAINING_OPERATOR_MODULE = "github.com/kubeflow/training-operator"


@dataclass(frozen=True)
class Cluster:
    state_dir: Path
    server: str
    pid: int
    owned: bool  # started by us, so stopped by stop()

    def kubeconfig(self, identity: str) -> Path:
        if identity not in IDENTITIES:
            raise KeyError(f"unknown identity {identity!r}; one of {IDENTITIES}")
        return self.state_dir / f"{identity}.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"


_current: Cluster | None = None
# (name, process, state dir) of what we started, in start order; stopped in reverse.
_procs: list[tuple[str, subprocess.Popen, Path]] = []


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Go toolchain is not installed: the real cluster needs `go` (1.26+) on PATH")
    return go


def _go_env() -> dict[str, str]:
    return {**os.environ, "GOFLAGS": (os.environ.get("GOFLAGS", "") + " -mod=readonly -p=2").strip()}


def go_build(module: str, out: Path, package: str = ".", timeout: float = 1800, ldflags: str = "") -> Path:
    """`go build` (incremental) of `package` in tests/cluster/<module> into `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["nice", _go(), "build", "-o", str(out), *(["-ldflags", ldflags] if ldflags else []), package],
        cwd=CLUSTER_GO / module, capture_output=True, text=True, timeout=timeout, env=_go_env(),
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"go build of {package} in tests/cluster/{module} failed:\n{result.stderr[-4000:]}")
    return out


def module_info(module: str, path: str, field: str = "Dir") -> str:
    """A field of dependency `path` of tests/cluster/<module>, as `go list -m` tells it."""
    result = subprocess.run(
        [_go(), "list", "-m", "-f", "{{.%s}}" % field, path],
        cwd=CLUSTER_GO / module, capture_output=True, text=True, timeout=600, env=_go_env(),
    )  # fmt: skip
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"go list -m {path} in tests/cluster/{module} failed:\n{result.stderr[-2000:]}")
    return result.stdout.strip()


def module_dir(module: str, path: str) -> Path:
    """Where the Go module cache holds dependency `path` of tests/cluster/<module>."""
    return Path(module_info(module, path))


def build(timeout: float = 1800) -> Path:
    """The control-plane binary, built now if its sources or dependencies changed.

    The version the apiserver reports comes from linker flags, as in upstream's builds (Kueue
    refuses "v0.0.0-master"); it is k8s.io/kubernetes's version in go.mod. Same as `make cluster`.
    """
    v = module_info("controlplane", "k8s.io/kubernetes", "Version")
    major, minor = v.lstrip("v").split(".")[:2]
    p = "k8s.io/component-base/version"
    ldflags = f"-X {p}.gitVersion={v} -X {p}.gitMajor={major} -X {p}.gitMinor={minor} -X {p}.gitTreeState=clean"
    return go_build("controlplane", BINARY, timeout=timeout, ldflags=ldflags)


def build_all(timeout: float = 1800) -> list[Path]:
    """Every binary the real cluster runs (control plane, Kueue, training operator), built now
    where stale; `make go-tools` runs this before pytest so that a cold build is never charged
    to a test's timeout."""
    return [
        build(timeout),
        go_build("kueue", BIN_DIR / "kueue-up", timeout=timeout),
        go_build("kueue", BIN_DIR / "kueue-manager", package=f"{KUEUE_MODULE}/cmd/kueue", timeout=timeout),
        go_build("training-operator", BIN_DIR / "training-operator-up", timeout=timeout),
        go_build("training-operator", BIN_DIR / "training-operator",
                 package=f"{TRAINING_OPERATOR_MODULE}/cmd/training-operator.v1", timeout=timeout),  # fmt: skip
    ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"(no log: {e})"


def _running(state_dir: Path) -> Cluster | None:
    try:
        pid = int((state_dir / "pid").read_text().strip())
        server = (state_dir / "ready").read_text().strip()
    except (OSError, ValueError):
        return None
    return Cluster(state_dir, server, pid, owned=False) if _alive(pid) else None


def _spawn(name: str, args: list[str], state_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip
    _procs.append((name, proc, state_dir))
    if len(_procs) == 1:
        atexit.register(stop)
    return proc


def _wait(name: str, proc: subprocess.Popen, ready, timeout: float) -> None:
    """Until ready() is true; on death or timeout, stop everything and fail with the log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if ready():
            return
        time.sleep(0.25)
    code = proc.poll()
    log = next(d for n, p, d in _procs if p is proc) / f"{name}.log"
    stop() if name == "controlplane" else stop_addons()
    why = f"exited with code {code}" if code is not None else f"not ready after {timeout:.0f}s"
    raise RuntimeError(f"{name} {why}; last lines of {log}:\n{_tail(log)}")


def _webhooks_answer(cluster: Cluster, path: str, body: dict, answered: Callable[[int, dict], bool]) -> Callable[[], bool]:
    """A readiness check through the API server: a dry-run create that only the just-registered
    webhook, serving, can have answered as `answered(status, response)` says. A wrapper's `ready`
    file only says the webhook server started; the API server may still call an earlier start's
    address until it has read the new configuration, or not call the webhook at all yet (then a
    dry run is admitted without it: admission alone proves nothing)."""
    import base64
    import json

    import requests
    import yaml

    cfg = yaml.safe_load(cluster.kubeconfig("admin").read_text())
    ca = cluster.state_dir / "admin.webhook-probe.ca.crt"
    ca.write_bytes(base64.b64decode(cfg["clusters"][0]["cluster"]["certificate-authority-data"]))
    headers = {"Authorization": f"Bearer {cfg['users'][0]['user']['token']}", "Content-Type": "application/json"}

    def ready() -> bool:
        try:
            resp = requests.post(cluster.server + path, params={"dryRun": "All"}, data=json.dumps(body), headers=headers,
                                 verify=str(ca), timeout=15)  # fmt: skip
            answer = resp.json()
        except (requests.RequestException, ValueError):
            return False
        return answered(resp.status_code, answer)

    return ready


def _mutated_suspended(status: int, job: dict) -> bool:
    """Kueue's mutating webhook suspends a queued Job at creation (the probe asks suspend: false)."""
    return status < 300 and (job.get("spec") or {}).get("suspend") is True


def _denied_by(webhook: str) -> Callable[[int, dict], bool]:
    def denied(status: int, answer: dict) -> bool:
        return status >= 400 and f'admission webhook "{webhook}" denied the request' in str(answer.get("message", ""))

    return denied


def _remove_stale_state_dirs() -> None:
    """The .cluster/pytest-PID dirs of processes that are gone (their logs, a killed run's etcd)."""
    for d in (ROOT / ".cluster").glob("pytest-*"):
        pid = d.name.removeprefix("pytest-")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def start(state_dir: Path | None = None, ready_timeout: float = 300) -> Cluster:
    """Start the control plane (once per process) and wait until it is ready."""
    global _current
    if _current is not None:
        return _current
    reuse = os.environ.get("CPT_CLUSTER_DIR")
    if reuse and state_dir is None:
        found = _running(Path(reuse).resolve())
        if found is None:
            raise RuntimeError(f"CPT_CLUSTER_DIR={reuse} names no running, ready control plane (try `make cluster`)")
        _current = found
        return found

    binary = build()
    _remove_stale_state_dirs()
    state_dir = Path(state_dir or ROOT / ".cluster" / f"pytest-{os.getpid()}").resolve()
    args = [str(binary), "--state-dir", str(state_dir), "--exit-with-parent", "--ready-timeout", f"{int(ready_timeout)}s"]
    proc = _spawn("controlplane", args, state_dir)
    ready = state_dir / "ready"
    _wait("controlplane", proc, ready.exists, ready_timeout + 10)
    _current = Cluster(state_dir, ready.read_text().strip(), proc.pid, owned=True)
    return _current


def start_kueue(ready_timeout: float = 240) -> Path:
    """Kueue's manager (sigs.k8s.io/kueue, see tests/cluster/kueue), its CRDs and webhooks; returns its state dir."""
    cluster = start()
    up = go_build("kueue", BIN_DIR / "kueue-up")
    manager = go_build("kueue", BIN_DIR / "kueue-manager", package=f"{KUEUE_MODULE}/cmd/kueue")
    state_dir = cluster.state_dir / "kueue"
    args = [str(up), "--kubeconfig", str(cluster.kubeconfig("admin")), "--manager", str(manager),
            "--module-dir", str(module_dir("kueue", KUEUE_MODULE)), "--state-dir", str(state_dir)]  # fmt: skip
    proc = _spawn("kueue-up", args, state_dir)
    _wait("kueue-up", proc, (state_dir / "ready").exists, ready_timeout)
    probe = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "webhook-probe", "namespace": "default",
             "labels": {"kueue.x-k8s.io/queue-name": "webhook-probe"}},
             "spec": {"suspend": False,
                      "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}}  # fmt: skip
    _wait("kueue-up", proc, _webhooks_answer(cluster, "/apis/batch/v1/namespaces/default/jobs", probe, _mutated_suspended),
          ready_timeout)  # fmt: skip
    return state_dir


def start_training_operator(ready_timeout: float = 240) -> Path:
    """The training operator's PyTorchJob controller and webhook, with its CRD from the module
    cache (see tests/cluster/training-operator); returns its state dir."""
    cluster = start()
    up = go_build("training-operator", BIN_DIR / "training-operator-up")
    operator = go_build("training-operator", BIN_DIR / "training-operator",
                        package=f"{TRAINING_OPERATOR_MODULE}/cmd/training-operator.v1")  # fmt: skip
    state_dir = cluster.state_dir / "training-operator"
    args = [str(up), "--kubeconfig", str(cluster.kubeconfig("admin")), "--operator", str(operator),
            "--module-dir", str(module_dir("training-operator", TRAINING_OPERATOR_MODULE)),
            "--state-dir", str(state_dir)]  # fmt: skip
    proc = _spawn("training-operator-up", args, state_dir)
    _wait("training-operator-up", proc, (state_dir / "ready").exists, ready_timeout)
    # No container named "pytorch": only the training operator's validating webhook refuses that.
    template = {"spec": {"containers": [{"name": "not-pytorch", "image": "pytorch"}]}}
    probe = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "webhook-probe", "namespace": "default"},
             "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}}}  # fmt: skip
    _wait("training-operator-up", proc,
          _webhooks_answer(cluster, "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs", probe,
                           _denied_by("validator.pytorchjob.training-operator.kubeflow.org")), ready_timeout)  # fmt: skip
    return state_dir


def stop_addons(timeout: float = 60) -> None:
    """Stop Kueue and the training operator (whatever start_*() added), keeping the control plane."""
    _stop(timeout, keep_control_plane=True)


def stop(timeout: float = 60) -> None:
    """Stop what start*() started, last first (a reused control plane is left running)."""
    global _current
    _current = None
    _stop(timeout, keep_control_plane=False)


def _stop(timeout: float, keep_control_plane: bool) -> None:
    while _procs and not (keep_control_plane and _procs[-1][0] == "controlplane"):
        name, proc, state_dir = _procs.pop()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if name == "controlplane":
            # The etcd data of a run is not worth keeping (the binary removes it too); its logs
            # stay for a look after a failure, until the next run's start.
            shutil.rmtree(state_dir / "etcd", ignore_errors=True)
