"""Reconcile a CPTRun: checks, dependencies, its ConfigMap and PyTorchJob, its status.

Level-based and idempotent: every call computes the desired state from the run, the
watch caches (Corpora, CheckpointPolicies, PyTorchJobs of the run's own namespace) and
creates or patches only what differs. Status goes through Kopf's `patch`, only the
fields that changed. Called on create, update (including touches from children and
dependencies, see `touch`) and resume (operator restart).
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from cpt_operator import conditions as c
from cpt_operator import kube
from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.decide.checks import check_image, check_pool, check_scheduling
from cpt_operator.decide.dependencies import decide_dependencies
from cpt_operator.decide.immutable import changed_immutable_fields
from cpt_operator.decide.run_phase import TERMINAL_PHASES, JobView, job_state
from cpt_operator.decide.suspend import initial_suspend, kueue_managed
from cpt_operator.checkpoint_store import CheckpointsKept
from cpt_operator.handlers.deletion import ClusterCheckpointDeleter
from cpt_operator.handlers.common import check_secret, conditions_with, ensure_object, secret_retry, write_status
from cpt_operator.handlers.context import context_of
from cpt_operator.handlers.indexes import first, run_dependencies
from cpt_operator.handlers.job_control import control_job
from cpt_operator.render import names
from cpt_operator.render.configmap import TRAINER_CONFIG_KEY, digest
from cpt_operator.render.pod import ConflictingCredentials
from cpt_operator.render.pytorchjob import (
    RunInputs,
    referenced_corpora,
    render_pytorchjob,
    render_trainer_configmap,
    run_credentials,
)
from cpt_operator.plan import estimate_compute
from cpt_operator.render.trainer_config import total_steps


def _cost(spec: CPTRunSpec, achieved_tflops: float, price: float) -> dict[str, float] | None:
    n = spec.base_model.parameters
    if not n:
        return None
    gpus = spec.resources.nodes * spec.resources.gpus_per_node
    est = estimate_compute(n, spec.training.total_tokens, gpus, achieved_tflops, price)
    return {"flops": est.flops, "gpuHours": round(est.gpu_hours, 3), "cost": round(est.cost, 2)}


def _mirror_job(updates: list[Any], view: JobView, spec: CPTRunSpec, settings: Any) -> str:
    state = job_state(view, spec.suspend, kueue_managed(view.queue_name, settings.kueue.manage_jobs_without_queue_name))
    updates.append((c.CREATED, True, c.JOB_CREATED, f"PyTorchJob {view.name}"))
    for type_, (ok, reason, message) in (
        (c.RUNNING, state.running), (c.SUSPENDED, state.suspended), (c.SUCCEEDED, state.succeeded), (c.FAILED, state.failed),
    ):  # fmt: skip
        updates.append((type_, ok, reason, message))
    return state.phase


async def reconcile_run(
    body: Any, spec: Any, status: Any, meta: Any, namespace: str, name: str, uid: str, patch: Any, memo: Any,
    logger: Any, corpora_by_name: Any, policies_by_name: Any, pytorchjobs_by_run: Any, retry: int = 0, **_: Any,
) -> None:  # fmt: skip
    ctx = context_of(memo)
    settings = ctx.settings
    now = c.now_rfc3339()
    generation = meta.get("generation")
    current = dict(status or {})
    current_phase = current.get("phase")
    updates: list[tuple[str, Any, str, str]] = []
    desired: dict[str, Any] = {"observedGeneration": generation}

    # A run the forgetting monitor halted stays halted (suspended) until the tenant resumes it
    # explicitly; the control loop, not this handler, leaves the Halted phase.
    halted = current_phase == "Halted"

    def finish(phase: str | None) -> None:
        # A finished run stays finished: nothing here moves a terminal phase back.
        if current_phase in TERMINAL_PHASES and phase not in TERMINAL_PHASES:
            phase = current_phase
        elif halted and phase not in TERMINAL_PHASES:
            phase = "Halted"
        desired["phase"] = phase
        desired["conditions"] = conditions_with(list(current.get("conditions") or []), updates, generation, now)
        write_status(patch, current, desired)

    # The job, from the watch cache; a GET only when the cache has none (just created, lag).
    job_body = first(pytorchjobs_by_run, (namespace, name))
    if job_body is None and current.get("pytorchJobName"):
        job_body = await ctx.kube.get(kube.PYTORCHJOBS, namespace, current["pytorchJobName"])
    view = JobView.from_body(job_body) if job_body is not None else None

    # 1. The spec, as the API server stored it (schema and CEL ran there already).
    try:
        names.check_name(name, "CPTRun name")
        run = CPTRunSpec.model_validate(dict(spec))
    except (ValidationError, names.InvalidName) as exc:
        updates.append((c.ACCEPTED, False, c.INVALID_SPEC, str(exc)))
        finish(current_phase or "Pending")
        return

    # 2. What the platform allows.
    pool, refusal = check_pool(run, namespace, settings)
    refusal = refusal or check_image(run, settings)
    if refusal is None and pool is not None:
        refusal = check_scheduling(run, pool)
    changed = changed_immutable_fields(view.spec_digest, run.to_wire()) if view is not None else []
    if refusal is None and changed:
        refusal_reason = c.IMMUTABLE_FIELD_CHANGED
        refusal_message = (f"{', '.join('spec.' + f for f in changed)} cannot change once the run has started; "
                           "revert the change or create a new CPTRun (the running job is left as it is)")  # fmt: skip
    elif refusal is not None:
        refusal_reason, refusal_message = refusal.reason, refusal.message
    else:
        refusal_reason = refusal_message = ""

    desired["progress"] = {**(current.get("progress") or {}), "totalSteps": total_steps(run), "totalTokens": run.training.total_tokens}
    cost = _cost(run, settings.achieved_tflops_per_gpu, settings.price_per_gpu_hour)
    if cost is not None:
        desired["costEstimate"] = cost

    # 3. Dependencies, in the run's own namespace only.
    corpus_names = referenced_corpora(run)
    corpus_bodies = {n: first(corpora_by_name, (namespace, n)) for n in corpus_names}
    policy_body = first(policies_by_name, (namespace, run.checkpoint_policy_ref.name))
    if policy_body is not None:
        desired["deleteCheckpointsWithRun"] = bool(policy_body["spec"].get("deleteWithRun", False))
    deps = decide_dependencies(namespace, corpus_names, corpus_bodies, run.checkpoint_policy_ref.name, policy_body)

    if refusal_reason:
        updates.append((c.ACCEPTED, False, refusal_reason, refusal_message))
        if view is None:
            updates.append((c.CREATED, False, c.NOT_CREATED, refusal_message))
        finish(_mirror_job(updates, view, run, settings) if view is not None else "Pending")
        return
    updates.append((c.ACCEPTED, True, c.SPEC_ACCEPTED, "the spec is valid and allowed"))

    if not deps.ready:
        updates.append((c.DEPENDENCIES_READY, False, deps.reason, deps.message))
        if view is None:
            updates.append((c.CREATED, False, c.NOT_CREATED, deps.message))
        # A running job keeps running (e.g. a replay corpus being re-curated): only new starts wait.
        finish(_mirror_job(updates, view, run, settings) if view is not None else deps.phase)
        return

    try:
        corpora = {n: CorpusSpec.model_validate(b["spec"]) for n, b in corpus_bodies.items() if b is not None}
        policy = CheckpointPolicySpec.model_validate(policy_body["spec"])  # type: ignore[index]
        outputs = {n: b["status"]["outputUri"] for n, b in corpus_bodies.items() if b and (b.get("status") or {}).get("outputUri")}
        inputs = RunInputs(namespace, name, uid, run, corpora, policy, outputs)
        secret_ref = run_credentials(inputs)
    except (ValidationError, ConflictingCredentials) as exc:
        reason = c.CONFLICTING_CREDENTIALS if isinstance(exc, ConflictingCredentials) else c.INVALID_SPEC
        updates.append((c.ACCEPTED, False, reason, str(exc)))
        finish(_mirror_job(updates, view, run, settings) if view is not None else "Pending")
        return

    configmap = render_trainer_configmap(inputs, settings)
    config_text = configmap["data"][TRAINER_CONFIG_KEY]
    assert pool is not None

    if view is None:
        if current_phase in TERMINAL_PHASES:  # finished and its job deleted: never train again
            finish(current_phase)
            return
        missing = await check_secret(ctx, namespace, secret_ref)
        if missing is not None:
            updates.append((c.DEPENDENCIES_READY, False, missing.reason, missing.message))
            updates.append((c.CREATED, False, c.NOT_CREATED, missing.message))
            finish("Pending")
            raise secret_retry(ctx, missing, retry)
        updates.append((c.DEPENDENCIES_READY, True, deps.reason, deps.message))
        existing_cm, created_cm = await ensure_object(ctx, kube.CONFIGMAPS, configmap)
        if not created_cm and (existing_cm.get("data") or {}) != configmap["data"]:
            await ctx.kube.patch(kube.CONFIGMAPS, namespace, configmap["metadata"]["name"], {"data": configmap["data"]})
        job = render_pytorchjob(inputs, settings, pool, initial_suspend(run.suspend, run.resources.queue_name, halted), config_text)
        job_body, created = await ensure_object(ctx, kube.PYTORCHJOBS, job)
        view = JobView.from_body(job_body)
        if created:
            logger.info("created PyTorchJob %s/%s", namespace, view.name)
            kopf.info(body, reason="PyTorchJobCreated", message=c.truncate_message(f"created PyTorchJob {view.name}"))
    else:
        updates.append((c.DEPENDENCIES_READY, True, deps.reason, deps.message))
        if view.config_digest != digest(config_text):  # a mutable field changed: the next trainer start reads it
            cm_name = configmap["metadata"]["name"]
            if await ctx.kube.patch(kube.CONFIGMAPS, namespace, cm_name, {"data": configmap["data"]}) is None:
                await ensure_object(ctx, kube.CONFIGMAPS, configmap)
            await ctx.kube.patch(kube.PYTORCHJOBS, namespace, view.name,
                                 {"metadata": {"annotations": {names.ANNOTATION_CONFIG_DIGEST: digest(config_text)}}})  # fmt: skip
        if current_phase not in TERMINAL_PHASES:
            # Stopped the way whoever admits the job supports (under Kueue: its Workload). Before
            # a start, a fresh read: this event's body may predate the control loop's halt.
            patched = await control_job(ctx, namespace, job_body, run.suspend or halted, logger,
                                        veto_start=lambda: halted_meanwhile(ctx, namespace, name))  # fmt: skip
            if patched is not None:
                view = JobView.from_body(patched)

    phase = _mirror_job(updates, view, run, settings)
    if phase == "Suspended" and not halted and not run.suspend:
        # Suspended by no one this body knows of: the forgetting monitor, after this event was sent.
        halted = await halted_meanwhile(ctx, namespace, name)
    desired["startedAt"] = current.get("startedAt") or now
    desired["pytorchJobName"] = view.name
    desired["configMapName"] = configmap["metadata"]["name"]
    if phase in TERMINAL_PHASES and not current.get("completedAt"):
        desired["completedAt"] = now
    finish(phase)


async def halted_meanwhile(ctx: Any, namespace: str, name: str) -> bool:
    """A fresh read before un-suspending: the forgetting monitor may have halted the run after
    the event this reconcile handles was sent."""
    fresh = await ctx.kube.get(kube.CPTRUNS, namespace, name)
    st = (fresh or {}).get("status") or {}
    return st.get("phase") == "Halted" or (st.get("halt") or {}).get("action") == "Halt"


async def delete_run(
    body: Any, spec: Any, namespace: str, name: str, memo: Any, logger: Any, policies_by_name: Any, **_: Any
) -> None:
    """Deletion of a run whose policy deletes checkpoints with it (only those have our finalizer).

    Order: the PyTorchJob goes first (foreground: its pods are gone when it is), so no
    trainer writes a checkpoint while they are deleted; then the checkpoints; then Kopf
    removes the finalizer and the garbage collector deletes the ConfigMap. Retries are
    bounded (Tuning.deletion_retries): after the last one the finalizer is released anyway.
    """
    ctx = context_of(memo)
    job_name = (body.get("status") or {}).get("pytorchJobName") or names.pytorchjob_name(name)
    job = await ctx.kube.get(kube.PYTORCHJOBS, namespace, job_name)
    if job is not None:
        if not (job.get("metadata") or {}).get("deletionTimestamp"):
            await ctx.kube.delete(kube.PYTORCHJOBS, namespace, job_name, propagation="Foreground")
        if await ctx.kube.get(kube.PYTORCHJOBS, namespace, job_name) is not None:
            raise kopf.TemporaryError(f"waiting for PyTorchJob {job_name} and its pods to be deleted", delay=5)
    _, policy_name = run_dependencies(dict(spec or {}))
    policy_body = first(policies_by_name, (namespace, policy_name or ""))
    if policy_body is None:
        logger.warning("CheckpointPolicy %r is gone: cannot locate the checkpoints of %s/%s", policy_name, namespace, name)
        kopf.warn(body, reason="CheckpointsNotDeleted", message=f"CheckpointPolicy {policy_name!r} not found; checkpoints were kept")
        return
    policy = CheckpointPolicySpec.model_validate(policy_body["spec"])
    deleter = ctx.checkpoint_store or ClusterCheckpointDeleter(ctx)
    try:
        done = await deleter.delete_run_checkpoints(namespace, name, policy.storage)
    except CheckpointsKept as exc:
        logger.warning("checkpoints of %s/%s kept: %s", namespace, name, exc)
        kopf.warn(body, reason="CheckpointsNotDeleted", message=c.truncate_message(str(exc)))
        return
    logger.info("checkpoints of %s/%s: %s", namespace, name, done)
    kopf.info(body, reason="CheckpointsDeleted", message=c.truncate_message(done))


def deletes_checkpoints(status: Any, **_: Any) -> bool:
    """Filter of the deletion handler: only such runs get (and keep) the finalizer."""
    return bool((status or {}).get("deleteCheckpointsWithRun"))
