"""The operator's metrics control loop: every `control_interval_seconds`, one
`control_step` pass per active CPTRun (Prometheus -> status, rotation, forgetting halts).

It runs as one background task of the operator rather than a Kopf timer per run: Kopf
timers put a finalizer on every object, which would block namespace deletion whenever the
operator is gone (see docs/operator.md). Reads are plain GET/LIST (least privilege: the
RBAC list already grants them; the runs are listed in pages); writes are merge patches of
the fields this loop owns that changed since the pass read them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from typing import Any

from prometheus_client import Counter, Histogram

from cpt_operator import kube
from cpt_operator.conditions import parse_rfc3339
from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.control.prometheus import (
    MetricsUnavailable,
    PrometheusClient,
    RunMetrics,
    evaluation_window,
    scrape_run_metrics,
)
from cpt_operator.control.retain_owner import controlled_by, foreign_retain_configmap
from cpt_operator.control.run_control import RESUME_ANNOTATION, RETAIN_LIST_NOT_OWNED, ControlInputs, control_step, volume_store
from cpt_operator.control.status_patch import changed_fields
from cpt_operator.api.common import API_VERSION
from cpt_operator.control.storage import CheckpointStore
from cpt_operator.handlers.job_control import control_job
from cpt_operator.handlers.context import OperatorContext
from cpt_operator.handlers.leadership import Leadership
from cpt_operator.handlers.stores import CredentialsMissing, s3_store_for
from cpt_operator.render import names as objnames
from cpt_operator.render.configmap import render_configmap
from cpt_operator.decide.run import recorded_prefix
from cpt_operator.render.trainer_config import RETAIN_FILE_NAME
from cpt_trainer.contract import metrics as names

logger = logging.getLogger("cpt_operator.control")

ACTIVE_PHASES = ("Starting", "Running", "Restarting", "Halted")
EVENTS = kube.Resource("", "v1", "events")

RECONCILES = Counter(names.OPERATOR_RECONCILES.name.removesuffix("_total"), names.OPERATOR_RECONCILES.help, ["kind"])
ERRORS = Counter(names.OPERATOR_ERRORS.name.removesuffix("_total"), names.OPERATOR_ERRORS.help, ["kind"])
ROTATIONS = Counter(names.OPERATOR_ROTATIONS.name.removesuffix("_total"), names.OPERATOR_ROTATIONS.help)
DELETIONS = Counter(names.OPERATOR_DELETIONS.name.removesuffix("_total"), names.OPERATOR_DELETIONS.help)
HALTS = Counter(names.OPERATOR_HALTS.name.removesuffix("_total"), names.OPERATOR_HALTS.help)
CONFLICTS = Counter(names.OPERATOR_STATUS_CONFLICTS.name.removesuffix("_total"), names.OPERATOR_STATUS_CONFLICTS.help)
QUERY_SECONDS = Histogram(names.OPERATOR_QUERY_SECONDS.name, names.OPERATOR_QUERY_SECONDS.help)


def prometheus_client_for(ctx: OperatorContext) -> PrometheusClient | None:
    s = ctx.settings
    if not s.prometheus_url:
        return None
    token = None
    if s.prometheus_bearer_token_file:
        with open(s.prometheus_bearer_token_file, encoding="utf-8") as fh:
            token = fh.read().strip()
    return PrometheusClient(s.prometheus_url, bearer_token=token, ca_file=s.prometheus_ca_file)


async def post_event(ctx: OperatorContext, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    now = datetime.datetime.now(tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": type_, "reason": reason, "message": message[:1024], "source": {"component": "cpt-operator"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }  # fmt: skip
    try:
        await ctx.kube.create(EVENTS, meta["namespace"], event)
    except kube.KubeError as exc:
        logger.warning("could not post Event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)


def last_pass_time(status: dict[str, Any]) -> float | None:
    """When a control pass last wrote fresh metrics (status.metrics.updatedAt)."""
    ts = parse_rfc3339((status.get("metrics") or {}).get("updatedAt"))
    return ts.timestamp() if ts else None


async def read_retain_problem(ctx: OperatorContext, namespace: str, name: str, uid: str) -> str | None:
    """Why the run's retain ConfigMap cannot carry a decision (it exists and is not this run's:
    `retain_owner`), or None; the trainer would read that list, so no deletion is decided."""
    configmap = await ctx.kube.get(kube.CONFIGMAPS, namespace, objnames.retain_configmap_name(name))
    problem = foreign_retain_configmap(configmap, uid)
    if problem:
        ctx.retain_written.pop((namespace, name), None)
        logger.warning("CPTRun %s/%s: %s", namespace, name, problem)
    return problem


async def write_retain_list(ctx: OperatorContext, body: dict[str, Any], retain: dict[str, Any]) -> str | None:
    """Create or update the run's retain ConfigMap (owned by the run), only when it changed:
    no API request while the decision stays what this process last wrote. An existing one that
    is not this run's is never patched: returns why (None when written)."""
    meta = body["metadata"]
    namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid", "")
    text = json.dumps(retain, indent=2, sort_keys=True) + "\n"
    if ctx.retain_written.get((namespace, name)) == text:
        return None
    cm_name = objnames.retain_configmap_name(name)
    owner = objnames.owner_reference(body.get("apiVersion") or API_VERSION, "CPTRun", name, uid)
    configmap = render_configmap(cm_name, namespace, RETAIN_FILE_NAME, text, objnames.run_labels(namespace, name, "retain"), owner)
    try:
        await ctx.kube.create(kube.CONFIGMAPS, namespace, configmap)
    except kube.Conflict:
        existing = await ctx.kube.get(kube.CONFIGMAPS, namespace, cm_name)
        if existing is not None and not controlled_by(existing, uid):
            problem = foreign_retain_configmap(existing, uid)
            logger.warning("CPTRun %s/%s: %s", namespace, name, problem)
            return problem
        if existing is None or (existing.get("data") or {}).get(RETAIN_FILE_NAME) != text:
            await ctx.kube.patch(kube.CONFIGMAPS, namespace, cm_name, {"data": {RETAIN_FILE_NAME: text}})
    ctx.retain_written[(namespace, name)] = text
    return None


def run_pod_selector(name: str, uid: str) -> dict[str, str]:
    """The labels of a run's metrics-exporting pod (the PyTorchJob master) as the operator set
    them; with the run's own uid, a pod a tenant labelled itself names at most its own run."""
    return {objnames.LABEL_RUN: name, objnames.LABEL_RUN_UID: uid, objnames.LABEL_MANAGED_BY: objnames.MANAGED_BY,
            "cpt.dev/replica-type": "master"}  # fmt: skip


async def scrape_run_pods(ctx: OperatorContext, namespace: str, name: str, uid: str, port: int) -> RunMetrics:
    """Without Prometheus: the run's metrics straight from its master pod, found by the run's
    uid label in the run's own namespace (never a pod of another namespace or an older run of
    the same name); MetricsUnavailable when none runs."""
    if not uid:
        raise MetricsUnavailable("the run has no uid: no pod is scraped")
    pods = await ctx.kube.list(kube.PODS, namespace, run_pod_selector(name, uid))
    running = [p for p in pods if (p.get("metadata") or {}).get("namespace", namespace) == namespace
               and (p.get("status") or {}).get("phase") == "Running" and (p.get("status") or {}).get("podIP")]  # fmt: skip
    if not running:
        raise MetricsUnavailable(
            f"no Prometheus is configured (operator setting prometheusUrl) and no running trainer pod of the run "
            f"(label {objnames.LABEL_RUN_UID}={uid}) to scrape directly"
        )
    ip = running[0]["status"]["podIP"]
    host = f"[{ip}]" if ":" in ip else ip
    return await asyncio.to_thread(scrape_run_metrics, f"http://{host}:{port}/metrics", namespace, name)


async def control_run(ctx: OperatorContext, prom: PrometheusClient | None, body: dict[str, Any]) -> None:
    """One control pass over one CPTRun."""
    meta, status = body["metadata"], dict(body.get("status") or {})
    namespace, name = meta["namespace"], meta["name"]
    spec = CPTRunSpec.model_validate(body["spec"])
    policy_body = await ctx.kube.get(kube.CHECKPOINT_POLICIES, namespace, spec.checkpoint_policy_ref.name)
    if policy_body is None:
        return  # the reconcile handler reports the missing policy
    policy = CheckpointPolicySpec.model_validate(policy_body["spec"])
    uid = meta.get("uid") or ""
    metrics, error = None, None
    if prom is None:
        try:
            metrics = await scrape_run_pods(ctx, namespace, name, uid, spec.trainer.metrics_port)
        except MetricsUnavailable as exc:
            error = str(exc)
    else:
        try:
            # Back to the last pass that wrote this run's status, so an evaluation made while the
            # operator was down or Prometheus unreachable is not lost. Selected by the run's uid
            # too: a run recreated under the same name never reads the old one's series.
            window, step = evaluation_window(last_pass_time(status), time.time(), ctx.settings.control_interval_seconds)
            metrics = await asyncio.to_thread(prom.run_metrics, namespace, name, uid, window, step)
        except MetricsUnavailable as exc:
            error = str(exc)
        finally:
            if prom.last_latency is not None:
                QUERY_SECONDS.observe(prom.last_latency)
    store: CheckpointStore | None
    implausible: str | None = None
    retain_problem: str | None = None
    if policy.storage.pvc is not None:
        # The operator cannot mount a tenant's volume: the trainer lists it in its metrics and
        # applies the retain list this pass writes. Steps it cannot have written are left out.
        prefix = recorded_prefix(status, policy.storage, namespace, name, ctx.settings.pvc_mount_root)
        store = None
        if metrics is not None:
            store, implausible = volume_store(prefix, spec, metrics)
            if implausible:
                logger.warning("CPTRun %s/%s: %s", namespace, name, implausible)
            retain_problem = await read_retain_problem(ctx, namespace, name, uid)
    else:
        try:
            store = await s3_store_for(ctx, namespace, name, policy.storage,
                                       prefix=recorded_prefix(status, policy.storage, namespace, name, ctx.settings.pvc_mount_root))
        except CredentialsMissing:
            store = None  # the reconcile reports the Secret; nothing is deleted meanwhile
    resume = (meta.get("annotations") or {}).get(RESUME_ANNOTATION)
    inputs = ControlInputs(
        namespace, name, meta.get("generation"), spec, policy, status, metrics, error, store, time.time(),
        ctx.settings.metrics_stale_seconds, int(resume) if resume and resume.isdigit() else None, implausible,
        retain_problem,
    )  # fmt: skip
    out = await asyncio.to_thread(control_step, inputs)
    RECONCILES.labels("control").inc()
    if out.deleted:
        ROTATIONS.inc()
        DELETIONS.inc(len(out.deleted))
    if out.retain is not None:
        problem = await write_retain_list(ctx, body, out.retain)
        if problem:
            # Created by someone else since this pass read it: the decision is not recorded
            # either; the next pass finds the ConfigMap and decides no deletion.
            ERRORS.labels("control").inc()
            await post_event(ctx, body, "Warning", RETAIN_LIST_NOT_OWNED, problem)
            return
    # Only the fields that differ from what this pass read: nothing new, no write.
    changes = changed_fields(status, out.status_patch)
    if changes:
        # Conditional on the version this pass read: a reconcile that wrote meanwhile is never
        # overwritten with older data; this pass's decisions are redone on the next one.
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": changes}
        try:
            await ctx.kube.patch_status(kube.CPTRUNS, namespace, name, patch)
        except kube.Conflict:
            CONFLICTS.inc()
            logger.info("CPTRun %s/%s changed during the control pass; its status is written on the next pass", namespace, name)
            return
    # The job only after the status: the job's change wakes the run's reconcile, which must
    # already read phase Halted (or Running, on a resume) and so agree with the suspension.
    job_name = status.get("pytorchJobName")
    if job_name and (out.halt or out.resumed or out.rollback is not None or status.get("phase") == "Halted"):
        # A halt, a resume, or a halt of an earlier pass whose job write did not land (error,
        # restart): stop or start the job the way whoever admits it supports (under Kueue: its
        # Workload; a suspend alone would be undone by Kueue and keep the quota).
        job = await ctx.kube.get(kube.PYTORCHJOBS, namespace, job_name)
        if job is not None:
            want_stopped = spec.suspend or not out.resumed
            await control_job(ctx, namespace, job, want_stopped, logger)
            if out.halt:
                HALTS.inc()
                logger.info("halted CPTRun %s/%s: PyTorchJob %s stopped", namespace, name, job_name)
            if out.rollback is not None:
                # The run's reconcile writes the rollback's config and starts the job again
                # once its pods are gone (decide/run.py).
                logger.info("rolling back CPTRun %s/%s to step %d: PyTorchJob %s stopped", namespace, name,
                            out.rollback.from_step, job_name)  # fmt: skip
    for type_, reason, message in out.events:
        await post_event(ctx, body, type_, reason, message)


async def _control_run_bounded(ctx: OperatorContext, prom: PrometheusClient | None, body: dict[str, Any],
                               limit: asyncio.Semaphore) -> None:  # fmt: skip
    """One run's pass under its own deadline (`control_run_deadline_seconds`): a run whose storage
    or metrics stall is reported (log, Warning Event) and skipped this pass; the others go on."""
    meta = body["metadata"]
    namespace, name = meta.get("namespace"), meta.get("name")
    deadline = ctx.settings.control_run_deadline_seconds
    async with limit:
        try:
            await asyncio.wait_for(control_run(ctx, prom, body), timeout=deadline)
        except asyncio.TimeoutError:
            ERRORS.labels("control").inc()
            message = f"the control pass of this run took longer than {deadline:g} s and was skipped; it is retried next pass"
            logger.warning("CPTRun %s/%s: %s", namespace, name, message)
            await post_event(ctx, body, "Warning", "ControlPassDeadlineExceeded", message)
        except Exception:  # one run's failure must not stop the others
            ERRORS.labels("control").inc()
            logger.exception("control pass of %s/%s failed", namespace, name)


async def control_pass(ctx: OperatorContext, prom: PrometheusClient | None, leadership: Leadership | None = None) -> int:
    """One pass over every active run in the watched namespaces this replica leads; returns
    how many runs were visited. Runs are handled concurrently (at most `control_concurrency` at
    a time), each under its own deadline, so one run never delays another's."""
    visited = 0
    limit = asyncio.Semaphore(ctx.settings.control_concurrency)
    passes = []
    for namespace in ctx.settings.watch_namespaces or [""]:
        if leadership is not None and not await leadership.active(namespace):
            continue  # another replica is active (Kopf's peering): it runs the loop
        for body in await ctx.kube.list_paginated(kube.CPTRUNS, namespace):
            if (body.get("status") or {}).get("phase") not in ACTIVE_PHASES:
                continue
            visited += 1
            passes.append(_control_run_bounded(ctx, prom, body, limit))
    await asyncio.gather(*passes)
    return visited


async def control_loop(ctx: OperatorContext, stop: asyncio.Event) -> None:
    """Run `control_pass` every `control_interval_seconds` until `stop` is set."""
    prom = prometheus_client_for(ctx)
    leadership = Leadership(ctx.kube, ctx.peering)
    while not stop.is_set():
        try:
            await control_pass(ctx, prom, leadership)
        except Exception:
            ERRORS.labels("control").inc()
            logger.exception("control pass failed")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=ctx.settings.control_interval_seconds)


_metrics_server_started = False


def serve_operator_metrics(port: int) -> None:
    """The operator's own /metrics (prometheus-client), once per process; 0 disables it."""
    global _metrics_server_started
    if port <= 0 or _metrics_server_started:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port)
        _metrics_server_started = True
    except OSError as exc:
        logger.warning("operator metrics not served on port %d: %s", port, exc)


def start(ctx: OperatorContext) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """Start the control loop as a background task of the operator's event loop."""
    serve_operator_metrics(ctx.settings.operator_metrics_port)
    stop_event = asyncio.Event()
    return stop_event, asyncio.create_task(control_loop(ctx, stop_event), name="cpt-control-loop")


async def stop(stop_event: asyncio.Event | None, task: asyncio.Task[None] | None) -> None:
    if stop_event is not None:
        stop_event.set()
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
            await asyncio.wait_for(task, timeout=10)
