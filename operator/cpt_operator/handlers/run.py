"""Reconcile a CPTRun: gather the facts, decide (`decide/run.py`, pure), apply.

Level-based and idempotent: every call computes the desired state from the run, the
watch caches (Corpora, CheckpointPolicies, PyTorchJobs of the run's own namespace) and
creates or patches only what differs. Status goes through Kopf's `patch`, only the
fields that changed. Called on create, update (including touches from children and
dependencies, see `touch`) and resume (operator restart).
"""

from __future__ import annotations

from typing import Any

import kopf

from cpt_operator import conditions as c
from cpt_operator import kube
from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.checkpoint_store import CheckpointsKept, RunCheckpoints
from cpt_operator.decide.checks import Refusal
from cpt_operator.decide.run import (
    RunDecision, RunFacts, decide_checkpoint_deletion, decide_run, run_status,
)  # fmt: skip
from cpt_operator.conditions import conditions_with
from cpt_operator.decide.restarts import last_exit_from_pods, limit_message
from cpt_operator.decide.rollback import restarting
from cpt_operator.decide.run_phase import JobView
from cpt_operator.decide.trainer_report import unavailable_from_pods
from cpt_operator.handlers.common import NotOwned, check_secret, ensure_object, retry_later, write_status
from cpt_operator.handlers.context import OperatorContext, context_of
from cpt_operator.handlers.control import run_pod_selector
from cpt_operator.handlers.deletion import ClusterCheckpointDeleter
from cpt_operator.handlers.indexes import first, run_dependencies
from cpt_operator.handlers.job_control import control_job
from cpt_operator.render import names


async def reconcile_run(
    body: Any, spec: Any, status: Any, meta: Any, namespace: str, name: str, uid: str, patch: Any, memo: Any,
    logger: Any, corpora_by_name: Any, policies_by_name: Any, pytorchjobs_by_run: Any, retry: int = 0, **_: Any,
) -> None:  # fmt: skip
    ctx = context_of(memo)
    current = dict(status or {})
    # The job, from the watch cache; a GET only when the cache has none (just created, lag).
    job_body = first(pytorchjobs_by_run, (namespace, name))
    if job_body is None and current.get("pytorchJobName"):
        job_body = await ctx.kube.get(kube.PYTORCHJOBS, namespace, current["pytorchJobName"])
    corpus_names, policy_name = run_dependencies(dict(spec or {}))
    facts = RunFacts(
        namespace, name, uid, meta.get("generation"), dict(spec or {}), current, job_body,
        {n: first(corpora_by_name, (namespace, n)) for n in corpus_names},
        first(policies_by_name, (namespace, policy_name or "")), ctx.settings, c.now_rfc3339(),
    )  # fmt: skip
    decision = decide_run(facts)
    if decision.restart_count is not None:
        await describe_last_exit(ctx, facts, decision)
    try:
        view = await apply_run(ctx, facts, decision, body, logger)
    except NotOwned as exc:
        decision.refuse(c.ACCEPTED, c.OBJECT_NOT_OWNED, str(exc), current.get("phase") or "Pending")
        decision.job_ignored = True
        if retry == 0:
            kopf.warn(body, reason=c.OBJECT_NOT_OWNED, message=c.truncate_message(str(exc)))
        view = None
    except SecretMissing as exc:
        write_status(patch, current, run_status(facts, decision, None, decision.halted))
        raise retry_later(ctx, exc.refusal, retry) from None
    if decision.job_ignored:
        write_status(patch, current, run_status(facts, decision, None, decision.halted))
        # Nothing reports when the tenant removes its object: re-checked later (bounded, doubling delay).
        raise retry_later(ctx, Refusal(c.OBJECT_NOT_OWNED, decision.message_of(c.ACCEPTED)), retry)
    if decision.restart_count is not None and decision.restart_limit:
        logger.warning("CPTRun %s/%s failed: %s", namespace, name, decision.restart_limit)
        kopf.warn(body, reason=c.RESTART_LIMIT_EXCEEDED, message=c.truncate_message(decision.restart_limit))
    desired = run_status(facts, decision, view, decision.halted)
    if desired["phase"] == "Failed" and not c.is_true(desired.get("conditions"), c.EVALUATION_UNAVAILABLE):
        await report_unavailable_evaluation(ctx, facts, desired)
    if desired["phase"] == "Suspended" and not decision.halted and not decision.tenant_suspend:
        # Suspended by no one this body knows of: the forgetting monitor, after this event was sent.
        if await halted_meanwhile(ctx, namespace, name):
            desired = run_status(facts, decision, view, True)
    write_status(patch, current, desired)


async def report_unavailable_evaluation(ctx: OperatorContext, f: RunFacts, desired: dict[str, Any]) -> None:
    """EvaluationUnavailable from the master pod's termination message, when the trainer wrote one."""
    pods = await ctx.kube.list(kube.PODS, f.namespace, run_pod_selector(f.name, f.uid))
    found = unavailable_from_pods(pods)
    if found is None:
        return
    eval_name, message = found
    update = (c.EVALUATION_UNAVAILABLE, True, c.BENCHMARK_CANNOT_RUN,
              f"spec.evaluation.generalEvals {eval_name} cannot run: {message}")  # fmt: skip
    desired["conditions"] = conditions_with(desired["conditions"], [update], f.generation, f.now)


async def describe_last_exit(ctx: OperatorContext, f: RunFacts, d: RunDecision) -> None:
    """The restart limit's message with the last exit code, when a pod still shows it (the
    training operator deletes the failed pod before it reports the restart: often none does)."""
    selector = {k: v for k, v in run_pod_selector(f.name, f.uid).items() if k != "cpt.dev/replica-type"}
    last_exit = last_exit_from_pods(await ctx.kube.list(kube.PODS, f.namespace, selector))
    if last_exit and d.restart_count is not None and f.job is not None:
        d.restart_limit = limit_message(d.restart_count, JobView.from_body(f.job).name, last_exit)


class SecretMissing(Exception):
    def __init__(self, refusal: Any):
        super().__init__(refusal.message)
        self.refusal = refusal


async def apply_run(ctx: OperatorContext, f: RunFacts, d: RunDecision, body: Any, logger: Any) -> JobView | None:
    """Make the decision so; returns the job as it is afterwards (None: the run has none, or
    one it does not own). A missing Secret (SecretMissing) or an object of a name this run
    uses that it does not own (NotOwned) stops before anything is created."""
    if d.job_ignored:
        return None
    job_body = f.job
    if d.job is not None:  # no job yet: the Secret, the ConfigMap, then the job
        missing = await check_secret(ctx, f.namespace, d.secret)
        if missing is not None:
            d.refuse(c.DEPENDENCIES_READY, missing.reason, missing.message, "Pending")
            raise SecretMissing(missing)
        assert d.configmap is not None
        existing_cm, created_cm = await ensure_object(ctx, kube.CONFIGMAPS, d.configmap, f.uid)
        if not created_cm and (existing_cm.get("data") or {}) != d.configmap["data"]:
            await ctx.kube.patch(kube.CONFIGMAPS, f.namespace, d.configmap["metadata"]["name"], {"data": d.configmap["data"]})
        job_body, created = await ensure_object(ctx, kube.PYTORCHJOBS, d.job, f.uid)
        if created:
            logger.info("created PyTorchJob %s/%s", f.namespace, d.job["metadata"]["name"])
            kopf.info(body, reason="PyTorchJobCreated", message=c.truncate_message(f"created PyTorchJob {d.job['metadata']['name']}"))
        return JobView.from_body(job_body)
    if job_body is None:
        return None
    if d.patch_config and d.configmap is not None:
        cm_patch, job_patch = d.config_patches()
        cm_name = d.configmap["metadata"]["name"]
        if await ctx.kube.patch(kube.CONFIGMAPS, f.namespace, cm_name, cm_patch) is None:
            await ensure_object(ctx, kube.CONFIGMAPS, d.configmap, f.uid)
        await ctx.kube.patch(kube.PYTORCHJOBS, f.namespace, job_body["metadata"]["name"], job_patch)
    if d.want_stopped is not None:
        # Stopped the way whoever admits the job supports (under Kueue: its Workload). Before
        # a start, a fresh read: this event's body may predate the control loop's halt.
        patched = await control_job(ctx, f.namespace, job_body, d.want_stopped, logger,
                                    veto_start=lambda: stopped_meanwhile(ctx, f))  # fmt: skip
        if patched is not None:
            job_body = patched
    return JobView.from_body(job_body)


async def stopped_meanwhile(ctx: Any, f: RunFacts) -> bool:
    """A fresh read before un-suspending: the control loop may have halted the run, or decided a
    rollback (which restarts the job only with its new config), after this event was sent."""
    fresh = await ctx.kube.get(kube.CPTRUNS, f.namespace, f.name)
    st = (fresh or {}).get("status") or {}
    if st.get("phase") == "Halted" or (st.get("halt") or {}).get("action") == "Halt":
        return True
    return restarting(list(st.get("rollbacks") or [])) and not restarting(list(f.status.get("rollbacks") or []))


async def halted_meanwhile(ctx: Any, namespace: str, name: str) -> bool:
    """A fresh read before un-suspending: the forgetting monitor may have halted the run after
    the event this reconcile handles was sent."""
    fresh = await ctx.kube.get(kube.CPTRUNS, namespace, name)
    st = (fresh or {}).get("status") or {}
    return st.get("phase") == "Halted" or (st.get("halt") or {}).get("action") == "Halt"


async def delete_run(body: Any, spec: Any, namespace: str, name: str, memo: Any, logger: Any, **_: Any) -> None:
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
    # The policy read fresh (not from the cache): an edit that turned deleteWithRun off or moved
    # the storage just before the deletion counts.
    _, policy_name = run_dependencies(dict(spec or {}))
    policy_body = await ctx.kube.get(kube.CHECKPOINT_POLICIES, namespace, policy_name) if policy_name else None
    policy = CheckpointPolicySpec.model_validate(policy_body["spec"]) if policy_body is not None else None
    uid = (body.get("metadata") or {}).get("uid") or ""
    status = dict(body.get("status") or {})
    plan = decide_checkpoint_deletion(status, policy, policy_name or "", namespace, name, uid, ctx.settings.pvc_mount_root)
    if plan.prefix is None or policy is None:
        logger.warning("checkpoints of %s/%s kept: %s", namespace, name, plan.reason)
        kopf.warn(body, reason="CheckpointsNotDeleted", message=c.truncate_message(plan.reason))
        return
    deleter = ctx.checkpoint_store or ClusterCheckpointDeleter(ctx)
    try:
        cleanup_uid = (status.get("cleanupJob") or {}).get("uid")
        done = await deleter.delete_run_checkpoints(RunCheckpoints(namespace, name, uid, plan.prefix, policy.storage, cleanup_uid))
    except CheckpointsKept as exc:
        logger.warning("checkpoints of %s/%s kept: %s", namespace, name, exc)
        kopf.warn(body, reason="CheckpointsNotDeleted", message=c.truncate_message(str(exc)))
        return
    logger.info("checkpoints of %s/%s: %s", namespace, name, done)
    kopf.info(body, reason="CheckpointsDeleted", message=c.truncate_message(done))


def deletes_checkpoints(status: Any, **_: Any) -> bool:
    """Filter of the deletion handler: only such runs get (and keep) the finalizer."""
    return bool((status or {}).get("deleteCheckpointsWithRun"))
