"""One pass of the metrics-driven control loop for one CPTRun.

`control_step(inputs)` reads what the trainer measured (Prometheus or a direct scrape) and
the run's checkpoints (their own metrics.json), and decides:

- `status.progress` and `status.metrics`;
- `status.evaluations` and `status.checkpoints` (keyed by step: nothing recorded twice,
  nothing lost across operator restarts, since checkpoints are re-read from storage; bounded
  by `checkpoint_records.bound_records`);
- checkpoint rotation by the CheckpointPolicy (deletes go through the store, which
  refuses anything outside the run's prefix), of steps confirmed on two passes only
  (`checkpoint_records.confirmed_steps`);
- the forgetting monitor (Halt: suspend + phase Halted; Warn: condition + Event; Rollback:
  stop and restart from the best eligible checkpoint with the mix and learning rate scaled, at
  most `rollback.maxAttempts` times, then as Halt). A halted run's `status.halt` and condition
  stay as decided: later passes rewrite neither and post no second Event.

Nothing is deleted and nothing halts while metrics are unavailable or stale, or while the
store cannot be listed; nothing is deleted on a partial Prometheus answer (warnings) or while
the run's retain ConfigMap belongs to someone else. The caller applies `status_patch` (only
what differs from the status it read: `status_patch.changed_fields`), suspends the job when
`halt` is set, and posts `events`.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass, field
from typing import Any

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.conditions import now_rfc3339, parse_rfc3339, set_condition, truncate_message
from cpt_operator.control.checkpoint_records import (
    DELETING,
    bound_records,
    confirmed_steps,
    record_listed,
    with_marker,
)
from cpt_operator.control.prometheus import RunMetrics
from cpt_operator.control.storage import CheckpointStore, DeletionRefused, StorageError, VolumeCheckpointStore, retain_list
from cpt_operator.decide.forgetting import EvalPoint, decide_forgetting
from cpt_operator.decide.rollback import RollbackPlan, abandoned, plan_rollback, restarting
from cpt_operator.decide.retention import (
    EvaluatedCheckpoint,
    RetentionPolicy,
    composite_score,
    select_checkpoints_to_keep,
)
from cpt_operator.render.trainer_config import total_steps
from cpt_trainer.contract import metrics as names

logger = logging.getLogger(__name__)

# Condition types and reasons of the control loop.
METRICS_AVAILABLE = "MetricsAvailable"
"""True while the run's metrics are fresh; False (MetricsUnavailable) stops deletions and halts."""
FORGETTING = "ForgettingThresholdExceeded"
"""True when the general regression stayed over the threshold for `patience` evaluations."""
CHECKPOINTS_ROTATED = "CheckpointsRotated"
"""False while the store cannot be listed or a deletion failed (retried next pass)."""
METRICS_FRESH = "MetricsFresh"
METRICS_UNAVAILABLE = "MetricsUnavailable"
METRICS_STALE = "MetricsStale"
WITHIN_THRESHOLD = "WithinThreshold"
RESUMED = "ResumedByTenant"
TOKENIZER_EFFECTIVE = "TokenizerExtensionEffective"
"""The vocabulary extension reduced the domain token count (False: it did not, with the numbers)."""
FEWER_TOKENS = "FewerTokens"
NO_TOKEN_REDUCTION = "NoTokenReduction"
ROLLING_BACK = "RollingBack"
"""action Rollback: the run restarts from its best eligible checkpoint with more replay and a lower LR."""
RESUME_ANNOTATION = "cpt.dev/resume-after-step"
"""Set to the halted step (status.halt.step) to resume a run the forgetting monitor halted."""
THRESHOLD_EXCEEDED = "ForgettingThresholdExceeded"
ROTATED = "Rotated"
STORAGE_UNAVAILABLE = "StorageUnavailable"
DELETION_REFUSED = "DeletionRefused"
CHECKPOINT_LISTING = "CheckpointListingPlausible"
"""False while the trainer's metrics list checkpoint steps the run cannot have written (beyond
its totalSteps, or beyond the step it reports): those steps are ignored (never recorded, never
kept, never a reason to delete)."""
IMPLAUSIBLE_STEPS = "ImplausibleCheckpointSteps"
LISTING_PLAUSIBLE = "ListingPlausible"
PARTIAL_METRICS = "PartialMetrics"
"""CheckpointsRotated=False: Prometheus answered with warnings (a partial answer); nothing deleted."""
RETAIN_LIST_NOT_OWNED = "RetainListNotOwned"
"""CheckpointsRotated=False: the run's retain ConfigMap exists and is not the operator's; nothing deleted."""

MAX_EVALUATIONS = 200
METRICS_REFRESH_SECONDS = 300.0
"""status.metrics.updatedAt moves when a value changes, else at most this often: a pass that
read nothing new writes nothing, and the evaluation window (`last_pass_time`) stays short."""


@dataclass
class ControlInputs:
    namespace: str
    name: str
    generation: int | None
    spec: CPTRunSpec
    policy: CheckpointPolicySpec
    status: dict[str, Any]
    metrics: RunMetrics | None
    metrics_error: str | None
    store: CheckpointStore | None
    now: float
    stale_after_seconds: float = 300.0
    # The tenant's explicit resume of a halted run: the `cpt.dev/resume-after-step` annotation.
    # Evaluations at or before that step no longer count towards forgetting.
    resume_after_step: int | None = None
    # What `plausible_listing` ignored of the trainer's checkpoint listing (a message), if anything.
    implausible_checkpoints: str | None = None
    # Why the run's retain ConfigMap cannot carry this pass's decision (it is not the
    # operator's, `retain_owner`): no deletion is decided while set.
    retain_list_problem: str | None = None


@dataclass
class ControlOutcome:
    status_patch: dict[str, Any] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    halt: bool = False
    resumed: bool = False
    rollback: RollbackPlan | None = None  # stop the job: it restarts with the rollback's settings
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    # For a volume (PVC): the retain list the trainer applies; None leaves the last one in place.
    retain: dict[str, Any] | None = None


def _iso(ts: float) -> str:
    return now_rfc3339(datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc))


def retention_policy(policy: CheckpointPolicySpec) -> RetentionPolicy:
    return RetentionPolicy(
        keep_last_n=policy.keep_last_n,
        keep_best_k=policy.keep_best_k,
        best_metric=policy.best_metric,
        milestone_interval=policy.milestone_interval,
        weight_domain=policy.composite_weights.domain,
        weight_general=policy.composite_weights.general,
    )


def plausible_listing(spec: CPTRunSpec, m: RunMetrics) -> tuple[dict[int, dict[str, Any]], str | None]:
    """The trainer's checkpoint listing (PVC storage, `m.volume_checkpoints`) without the steps
    the run cannot have written: beyond its totalSteps, or beyond the `cpt_step` it reports
    (a trainer resumes from its newest checkpoint, so it is never behind one; without a
    `cpt_step` nothing can be checked and nothing is taken). Returns the plausible entries and,
    when some were ignored, a message saying which and why."""
    steps = total_steps(spec)
    current = m.get(names.STEP)
    kept: dict[int, dict[str, Any]] = {}
    ignored: list[str] = []
    for step in sorted(m.volume_checkpoints):
        if step > steps:
            ignored.append(f"{step} (beyond totalSteps {steps})")
        elif current is None:
            ignored.append(f"{step} (no {names.STEP.name} reported)")
        elif step > current:
            ignored.append(f"{step} (beyond the reported {names.STEP.name} {int(current)})")
        else:
            kept[step] = m.volume_checkpoints[step]
    if not ignored:
        return kept, None
    shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
    message = (
        f"ignored checkpoint step(s) listed in the run's metrics that it cannot have written: {shown}; "
        "they are never recorded, kept in the retain list or a reason to delete; check what the run's "
        "trainer pod exports"
    )
    return kept, message


def volume_store(prefix: str, spec: CPTRunSpec, m: RunMetrics) -> tuple[VolumeCheckpointStore, str | None]:
    """A PVC's checkpoints as the trainer's metrics list them, less the implausible steps
    (`plausible_listing`), and the message saying what was left out (for ControlInputs)."""
    listed, implausible = plausible_listing(spec, m)
    return VolumeCheckpointStore(prefix, listed, m.baseline_domain_perplexity), implausible


def _progress(spec: CPTRunSpec, m: RunMetrics) -> dict[str, Any]:
    steps = total_steps(spec)
    step = int(m.get(names.STEP) or 0)
    tokens = int(m.get(names.TOKENS_SEEN) or 0)
    total_tokens = spec.training.total_tokens
    rate = m.get(names.TOKENS_PER_SECOND)
    out: dict[str, Any] = {
        "step": step,
        "totalSteps": steps,
        "display": f"{step}/{steps}",
        "tokens": tokens,
        "totalTokens": total_tokens,
        "percent": round(min(100.0, 100.0 * step / steps), 2),
    }
    if rate and rate > 0:
        out["etaSeconds"] = round(max(0.0, (total_tokens - tokens) / rate), 1)
    return out


def _metrics_status(m: RunMetrics, now: float, previous: dict[str, Any] | None) -> dict[str, Any]:
    pairs = {
        "trainLoss": names.TRAIN_LOSS,
        "learningRate": names.LEARNING_RATE,
        "tokensPerSecond": names.TOKENS_PER_SECOND,
        "mfu": names.MFU,
        "domainPerplexity": names.DOMAIN_PERPLEXITY,
        "generalRegression": names.GENERAL_REGRESSION,
    }
    out: dict[str, Any] = {k: v for k, spec in pairs.items() if (v := m.get(spec)) is not None}
    if m.general_scores:
        out["generalScore"] = max(m.general_scores.values())
    if m.baseline_general_scores:
        out["baselineGeneralScore"] = max(m.baseline_general_scores.values())
    if (step := m.get(names.EVAL_STEP)) is not None:
        out["evalStep"] = int(step)
    out["updatedAt"] = _iso(now)
    previous = previous or {}
    same = {k: v for k, v in previous.items() if k != "updatedAt"} == {k: v for k, v in out.items() if k != "updatedAt"}
    last = parse_rfc3339(previous.get("updatedAt"))
    if same and last is not None and 0 <= now - last.timestamp() < METRICS_REFRESH_SECONDS:
        out["updatedAt"] = previous["updatedAt"]
    return out


def _merge_evaluations(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_step = {int(e["step"]): e for e in existing}
    for e in new:
        by_step.setdefault(int(e["step"]), e)  # the first record of a step wins: nothing recorded twice
    return [by_step[s] for s in sorted(by_step)][-MAX_EVALUATIONS:]


def _deletion_hold(inputs: ControlInputs, m: RunMetrics) -> tuple[str, str] | None:
    """(reason, message) when this pass may decide no deletion although the store answered."""
    if inputs.retain_list_problem:
        return RETAIN_LIST_NOT_OWNED, f"{inputs.retain_list_problem}; no checkpoint is deleted meanwhile"
    if m.warnings:
        return PARTIAL_METRICS, (
            "Prometheus answered with warnings, so its answer may be partial: " + "; ".join(m.warnings)
            + "; no checkpoint is deleted on this pass"
        )  # fmt: skip
    return None


def _tokenizer_extension(report: dict[str, Any], conditions: list[dict[str, Any]], gen: int | None,
                         now: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """status.tokenizerExtension and its condition from the trainer's report in metrics.json:
    token counts on the domain eval sample before and after; no reduction is a False condition."""
    def num(key: str) -> Any:
        value = report.get(key)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    added = report.get("added")
    status = {k: v for k, v in {
        "addedTokens": len(added) if isinstance(added, list) else None, "tokensBefore": num("tokens_before"),
        "tokensAfter": num("tokens_after"), "tokenReduction": num("token_reduction"),
        "charsPerTokenBefore": num("chars_per_token_before"), "charsPerTokenAfter": num("chars_per_token_after"),
    }.items() if v is not None}  # fmt: skip
    warning = report.get("warning")
    if isinstance(warning, str) and warning:
        conditions = set_condition(conditions, TOKENIZER_EFFECTIVE, False, NO_TOKEN_REDUCTION, warning[:1024], gen, now)
    elif status.get("tokenReduction") is not None:
        message = (f"{status.get('addedTokens', 0)} added tokens: the domain sample takes "
                   f"{status['tokenReduction']:.1%} fewer tokens ({status.get('tokensBefore')} -> {status.get('tokensAfter')})")
        conditions = set_condition(conditions, TOKENIZER_EFFECTIVE, True, FEWER_TOKENS, message, gen, now)
    return status, conditions


def control_step(inputs: ControlInputs) -> ControlOutcome:
    """Decide one pass; see the module docstring."""
    out = ControlOutcome()
    status = inputs.status or {}
    now_text = _iso(inputs.now)
    conditions = list(status.get("conditions") or [])
    gen = inputs.generation
    m = inputs.metrics
    stale = m is not None and m.newest_timestamp is not None and inputs.now - m.newest_timestamp > inputs.stale_after_seconds
    if m is None or stale or not m.values:
        reason = METRICS_STALE if stale else METRICS_UNAVAILABLE
        message = inputs.metrics_error or ("the newest sample is older than the staleness limit" if stale else "no metrics for this run yet")
        conditions = set_condition(
            conditions, METRICS_AVAILABLE, False, reason, f"{message}; no checkpoint is deleted and no halt decided meanwhile", gen, now_text
        )
        out.status_patch = {"conditions": conditions}
        return out
    conditions = set_condition(conditions, METRICS_AVAILABLE, True, METRICS_FRESH, "metrics are fresh", gen, now_text)
    patch: dict[str, Any] = {"progress": _progress(inputs.spec, m), "metrics": _metrics_status(m, inputs.now, status.get("metrics"))}

    rollbacks = [dict(r) for r in status.get("rollbacks") or []]
    evaluations = _merge_evaluations(list(status.get("evaluations") or []), list(m.recent_evaluations))
    eval_step = m.get(names.EVAL_STEP)
    if eval_step is not None:
        evaluations = _merge_evaluations(
            evaluations,
            [{"step": int(eval_step), "domainPerplexity": m.get(names.DOMAIN_PERPLEXITY), "generalRegression": m.get(names.GENERAL_REGRESSION)}],
        )

    if inputs.implausible_checkpoints:
        if not any(c["type"] == CHECKPOINT_LISTING and c["status"] == "False" for c in conditions):
            out.events.append(("Warning", IMPLAUSIBLE_STEPS, truncate_message(inputs.implausible_checkpoints)))
        conditions = set_condition(conditions, CHECKPOINT_LISTING, False, IMPLAUSIBLE_STEPS, inputs.implausible_checkpoints, gen, now_text)
    elif any(c["type"] == CHECKPOINT_LISTING and c["status"] == "False" for c in conditions):
        conditions = set_condition(conditions, CHECKPOINT_LISTING, True, LISTING_PLAUSIBLE, "every listed checkpoint step is plausible", gen, now_text)

    # never edit the caller's status; a record beyond totalSteps (written before listings were
    # checked) names a checkpoint the run cannot have: it is dropped, never kept or deleted.
    previous = [dict(r) for r in status.get("checkpoints") or [] if int(r["step"]) <= total_steps(inputs.spec)]
    records = previous
    listed: set[int] = set()
    baseline_domain = None
    store_ok = inputs.store is not None
    if inputs.store is not None:
        try:
            records, listed, baseline_domain, extension = record_listed(inputs.store, previous)
            if extension is not None:
                patch["tokenizerExtension"], conditions = _tokenizer_extension(extension, conditions, gen, now_text)
            # The abandoned branch of a rollback (after its fromStep, written by an earlier
            # attempt): the trainer removes it when it resumes; never recorded, kept or deleted here.
            gone = {int(r["step"]) for r in records if abandoned(int(r["step"]), r.get("attempt"), rollbacks)}
            records = [r for r in records if int(r["step"]) not in gone]
            listed -= gone
        except StorageError as exc:
            store_ok = False
            conditions = set_condition(conditions, CHECKPOINTS_ROTATED, False, STORAGE_UNAVAILABLE, f"{exc}; retrying", gen, now_text)
    # Evaluations recorded with checkpoints fill gaps left by missed scrapes.
    evaluations = _merge_evaluations(
        evaluations,
        [{"step": r["step"], "domainPerplexity": r.get("domainPerplexity"), "generalRegression": r.get("generalRegression")}
         for r in records if r.get("generalRegression") is not None],
    )  # fmt: skip
    if restarting(rollbacks):  # the old trainer may still report its branch's evaluations
        evaluations = [e for e in evaluations if int(e["step"]) <= int(rollbacks[-1]["fromStep"])]
    patch["evaluations"] = evaluations

    threshold = inputs.spec.evaluation.forgetting_threshold
    policy = retention_policy(inputs.policy)
    live = [r for r in records if not r.get("deleted")]
    ckpts = [
        EvaluatedCheckpoint(int(r["step"]), r["uri"], r.get("domainPerplexity"), r.get("generalScore"), r.get("generalRegression"))
        for r in live
    ]
    decision = select_checkpoints_to_keep(ckpts, policy, threshold, baseline_domain)
    confirmed = confirmed_steps(previous, listed)
    # Without a readable store the records are last pass's, without the baseline that scores
    # them: they stay exactly as recorded (keptFor, scores, bestCheckpoint) until it answers.
    by_step = {c.step: c for c in ckpts}
    live_by_step = {int(r["step"]): r for r in live}
    for r in records if store_ok else []:
        if not r.get("deleted"):
            ck = by_step[int(r["step"])]
            r["keptFor"] = with_marker(list(decision.keep.get(int(r["step"]), [])), int(r["step"]), listed, confirmed)
            score = composite_score(ck, baseline_domain, policy)
            if score is not None:
                r["compositeScore"] = round(score, 6)
    hold = _deletion_hold(inputs, m)
    if store_ok and inputs.store is not None and hold is not None:
        reason, message = hold
        if not any(c["type"] == CHECKPOINTS_ROTATED and c["reason"] == reason for c in conditions):
            out.events.append(("Warning", reason, truncate_message(message)))
        conditions = set_condition(conditions, CHECKPOINTS_ROTATED, False, reason, message, gen, now_text)
    elif store_ok and inputs.store is not None:
        failures = []
        for step in decision.delete:
            if step not in confirmed:
                continue  # new, or missed by a listing since: deleted once two passes in a row list it
            record = live_by_step[step]
            try:
                inputs.store.delete(record["uri"])
            except DeletionRefused as exc:
                failures.append(str(exc))
                out.events.append(("Warning", DELETION_REFUSED, truncate_message(str(exc))))
                continue
            except StorageError as exc:
                failures.append(str(exc))
                record["keptFor"] = [DELETING]  # maybe half-deleted (no COMPLETE marker): retried unlisted
                continue
            record["deleted"] = True
            record["keptFor"] = []
            out.deleted.append(record["uri"])
        if failures:
            conditions = set_condition(conditions, CHECKPOINTS_ROTATED, False, STORAGE_UNAVAILABLE, "; ".join(failures)[:2000], gen, now_text)
        else:
            waiting = len([s for s in decision.delete if s not in confirmed])
            message = f"{len(decision.keep)} checkpoint(s) kept by policy"
            if waiting:
                message += f"; {waiting} to delete once two consecutive passes list them"
            conditions = set_condition(conditions, CHECKPOINTS_ROTATED, True, ROTATED, message, gen, now_text)
        if inputs.store.deletes_later:
            out.retain = retain_list(
                [int(r["step"]) for r in records if not r.get("deleted")],
                [int(r["step"]) for r in records if r.get("deleted") and int(r["step"]) in listed],
                sorted(listed),
            )
    if store_ok:  # else the records stay as the last pass that read the store bounded them
        records, left_out = bound_records(records, listed, decision.best)
        if left_out:
            note = f"{left_out} kept checkpoint(s) not listed in status.checkpoints (more than it holds); they stay kept"
            logger.warning("CPTRun %s/%s: %s", inputs.namespace, inputs.name, note)
            rotated = next((c for c in conditions if c["type"] == CHECKPOINTS_ROTATED), None)
            if rotated is not None:
                conditions = set_condition(conditions, CHECKPOINTS_ROTATED, rotated["status"] == "True", rotated["reason"],
                                           f"{rotated['message']}; {note}", gen, now_text)  # fmt: skip
    patch["checkpoints"] = records
    best_step = decision.best if store_ok else (status.get("bestCheckpoint") or {}).get("step")
    if decision.best is not None and store_ok:
        best = next(r for r in records if int(r["step"]) == decision.best)
        patch["bestCheckpoint"] = {"step": decision.best, "uri": best["uri"], "metric": policy.best_metric,
                                   **({"value": best["compositeScore"]} if "compositeScore" in best else {})}  # fmt: skip

    resume_after = inputs.resume_after_step
    counted = [e for e in evaluations if resume_after is None or int(e["step"]) > resume_after]
    forgetting = decide_forgetting(
        [EvalPoint(int(e["step"]), e.get("generalRegression")) for e in counted], threshold, inputs.spec.evaluation.patience
    )
    # Decided before (its condition, or status.halt if a stale writer dropped the condition):
    # the Event is not posted again.
    already = any(c["type"] == FORGETTING and c["status"] == "True" and c.get("reason") != ROLLING_BACK for c in conditions) \
        or bool(status.get("halt"))
    halt_step = (status.get("halt") or {}).get("step")
    if already and resume_after is not None and halt_step is not None and resume_after >= int(halt_step) and not forgetting.exceeded:
        # The tenant resumed explicitly: clear the halt; the monitor watches the evaluations after it.
        conditions = set_condition(conditions, FORGETTING, False, RESUMED, f"resumed by the tenant after step {resume_after}", gen, now_text)
        already = False
        patch["halt"] = None
        if status.get("phase") == "Halted":
            patch["phase"] = "Running"
            out.resumed = True
    message = forgetting.message(threshold, inputs.spec.evaluation.patience)
    action = inputs.spec.evaluation.action
    if restarting(rollbacks):
        pass  # decided; the job restarts with it (the run's reconcile), then the monitor watches again
    elif forgetting.exceeded and action == "Rollback" and status.get("phase") != "Halted":
        if rollbacks and rollbacks[-1].get("outcome") == "Resumed":
            rollbacks[-1]["outcome"] = "ForgotAgain"
        plan, why = plan_rollback(inputs.spec, rollbacks, best_step, forgetting.step, forgetting.regression)
        message = f"{message}; {why}"
        if plan is not None:
            conditions = set_condition(conditions, FORGETTING, True, ROLLING_BACK, message, gen, now_text)
            rollbacks.append(plan.record(now_text))
            patch["rollbacks"] = rollbacks
            # What the restart abandons: recorded after fromStep by this attempt.
            patch["checkpoints"] = [r for r in patch["checkpoints"] if int(r["step"]) <= plan.from_step]
            patch["evaluations"] = [e for e in evaluations if int(e["step"]) <= plan.from_step]
            out.rollback = plan
            out.events.append(("Warning", ROLLING_BACK, truncate_message(message)))
        else:
            patch["rollbacks"] = rollbacks
            conditions = set_condition(conditions, FORGETTING, True, THRESHOLD_EXCEEDED, message, gen, now_text)
            patch["halt"] = {"step": forgetting.step, "regression": forgetting.regression, "threshold": threshold, "action": "Halt"}
            out.events.append(("Warning", THRESHOLD_EXCEEDED, truncate_message(message)))
            out.halt = True
            patch["phase"] = "Halted"
    elif forgetting.exceeded and status.get("phase") == "Halted" and status.get("halt"):
        # Halted: the decision stands as recorded (status.halt, the condition's message, e.g. a
        # rollback cap's); a later pass rewrites neither and posts no second Event. Only a
        # condition a stale writer dropped is put back.
        if not any(c["type"] == FORGETTING and c["status"] == "True" and c.get("reason") != ROLLING_BACK for c in conditions):
            if action == "Rollback":
                again, why = plan_rollback(inputs.spec, rollbacks, best_step, forgetting.step, forgetting.regression)
                message = f"{message}; {why}" if again is None else message
            elif best_step is not None:
                message += f"; best eligible checkpoint: step {best_step}"
            conditions = set_condition(conditions, FORGETTING, True, THRESHOLD_EXCEEDED, message, gen, now_text)
    elif forgetting.exceeded:
        if best_step is not None:
            message += f"; best eligible checkpoint: step {best_step}"
        conditions = set_condition(conditions, FORGETTING, True, THRESHOLD_EXCEEDED, message, gen, now_text)
        # A Rollback run reaches this branch only once halted (its halt record lost): it was halted.
        recorded = "Halt" if action == "Rollback" else action
        patch["halt"] = {"step": forgetting.step, "regression": forgetting.regression, "threshold": threshold, "action": recorded}
        if not already:
            out.events.append(("Warning", THRESHOLD_EXCEEDED, truncate_message(message)))
        if action in ("Halt", "Rollback") and status.get("phase") != "Halted":
            out.halt = True
            patch["phase"] = "Halted"
    elif not already and not out.resumed:
        conditions = set_condition(conditions, FORGETTING, False, WITHIN_THRESHOLD, message, gen, now_text)
    patch["conditions"] = conditions
    out.status_patch = patch
    return out
