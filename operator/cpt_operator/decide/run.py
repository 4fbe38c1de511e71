"""What a CPTRun's reconcile should do (pure): from the run, its dependencies and its job to
the objects to create, the writes to an existing job, and the status.

`decide_run` is the whole decision; `handlers/run.py` gathers the facts (watch caches, one
GET at most) and applies the decision. Two facts only the apply step can learn, and the
decision names them instead of guessing: whether the tenant's Secret exists (asked before a
job is created, see `RunDecision.secret`) and whether the forgetting monitor halted the run
after the event being handled was sent (asked before anything starts the job).

Rules that hold whatever else the spec says:
- a stop always goes through: a tenant's `spec.suspend` or a halt stops an existing job even
  when the spec is now refused (an image the platform no longer allows, an immutable field
  changed, a defaulted field a CRD upgrade added, a spec that no longer parses);
- a refused run is never started or restarted; a running one is left as it is;
- a finished run never trains again; a halted one stays halted until the control loop says;
- a job that restarts more than the operator's backoffLimit without a new checkpoint is stopped
  and the run fails (decide/restarts.py: the training operator does not cap ExitCode restarts);
  its job stays stopped;
- objects that exist under the names this run uses count only when this run owns them
  (a controller owner reference with its uid): a tenant's look-alike is never adopted;
- where the run's checkpoints are and whether they go with it are fixed when its job is
  created (`status.checkpointStorage`): later policy edits never move or widen a deletion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cpt_operator import conditions as c
from cpt_operator.conditions import conditions_with
from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.common import SecretReference
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.decide.checks import (
    Refusal, check_grace_period, check_image, check_local_paths, check_pool, check_scheduling, run_local_locations,
)  # fmt: skip
from cpt_operator.decide.dependencies import decide_dependencies
from cpt_operator.decide.engine_choice import engine_choice
from cpt_operator.decide.immutable import changed_immutable_fields
from cpt_operator.decide.restarts import RestartCount, count_restarts, limit_message, newest_checkpoint_step
from cpt_operator.decide.rollback import restarting
from cpt_operator.decide.run_phase import TERMINAL_PHASES, JobView, job_state
from cpt_operator.decide.suspend import initial_suspend, kueue_managed
from cpt_operator.labels import ANNOTATION_CHECKPOINT_URI, ANNOTATION_CONFIG_DIGEST, ANNOTATION_DELETE_WITH_RUN
from cpt_operator.ownership import controlled_by
from cpt_operator.plan import estimate_compute
from cpt_operator.render import names
from cpt_operator.render.configmap import TRAINER_CONFIG_KEY, digest
from cpt_operator.render.locations import run_prefix
from cpt_operator.render.pod import ConflictingCredentials
from cpt_operator.render.pytorchjob import RunInputs, render_pytorchjob, render_trainer_configmap, run_credentials
from cpt_operator.render.trainer_config import total_steps
from cpt_operator.settings import OperatorSettings

NOT_OWNED = c.OBJECT_NOT_OWNED

ConditionUpdate = tuple[str, Any, str, str]


@dataclass(frozen=True)
class RunFacts:
    """Everything the decision reads, gathered by the handler."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    spec: dict[str, Any]
    status: dict[str, Any]
    job: dict[str, Any] | None  # the run's PyTorchJob (cache or GET), None when there is none
    corpora: dict[str, dict[str, Any] | None]  # every Corpus the raw spec names, in its namespace
    policy: dict[str, Any] | None  # the CheckpointPolicy the raw spec names
    settings: OperatorSettings
    now: str


@dataclass
class RunDecision:
    """What the apply step writes. Status is finished by `run_status` once the job is known."""

    updates: list[ConditionUpdate] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)  # fields besides phase and conditions
    phase: str | None = None  # the phase when no job tells it (no job, or nothing more to do)
    configmap: dict[str, Any] | None = None  # the trainer ConfigMap to create (or correct)
    job: dict[str, Any] | None = None  # the PyTorchJob to create
    secret: SecretReference | None = None  # must exist before the job is created
    patch_config: bool = False  # an existing job's trainer config changed: ConfigMap data + digest annotation
    want_stopped: bool | None = None  # an existing job: stop (True), start or keep running (False), leave (None)
    accepted: bool = False
    tenant_suspend: bool = False
    halted: bool = False
    job_ignored: bool = False  # a job of the run's name it does not own: never mirrored or controlled
    # The run failed by the restart limit (decide/restarts.py): the Failed condition's message; the job stays stopped.
    restart_limit: str | None = None
    restart_count: RestartCount | None = None  # set when the limit was exceeded on this look (Event, exit code)

    def message_of(self, type_: str) -> str:
        """The message of the last update to condition `type_` ("" when none)."""
        return next((u[3] for u in reversed(self.updates) if u[0] == type_), "")

    def refuse(self, type_: str, reason: str, message: str, phase: str) -> None:
        """What the apply step learnt stops the creation (a missing Secret, an object of the
        run's name it does not own): condition `type_` False, nothing created or recorded."""
        self.updates = [u for u in self.updates if u[0] != type_]
        self.updates.append((type_, False, reason, message))
        if type_ != c.CREATED:
            self.updates.append((c.CREATED, False, c.NOT_CREATED, message))
        self.phase, self.accepted, self.job = phase, False, None
        self.status.pop("checkpointStorage", None)
        self.status.pop("deleteCheckpointsWithRun", None)

    def config_patches(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(ConfigMap patch, PyTorchJob patch) for a changed trainer config."""
        assert self.configmap is not None
        text = self.configmap["data"][TRAINER_CONFIG_KEY]
        return {"data": self.configmap["data"]}, {"metadata": {"annotations": {ANNOTATION_CONFIG_DIGEST: digest(text)}}}


def not_owned_refusal(kind: str, name: str) -> Refusal:
    return Refusal(NOT_OWNED, f"a {kind} named {name!r} already exists and is not owned by this CPTRun; "
                              "delete it (the operator never takes over an object it did not create) or rename the run")  # fmt: skip


def recorded_storage(status: dict[str, Any]) -> dict[str, Any] | None:
    """status.checkpointStorage when it is complete (uri and deleteWithRun), else None."""
    rec = status.get("checkpointStorage")
    if isinstance(rec, dict) and isinstance(rec.get("uri"), str) and isinstance(rec.get("deleteWithRun"), bool):
        return rec
    return None


def recorded_prefix(status: dict[str, Any], storage: Any, namespace: str, name: str, pvc_root: str) -> str:
    """The prefix the control loop rotates: as recorded, else the uid-less one of older jobs."""
    rec = recorded_storage(status)
    return str(rec["uri"]) if rec is not None else run_prefix(storage, namespace, name, pvc_root)


def checkpoint_uri(status: dict[str, Any], job: dict[str, Any] | None, policy: CheckpointPolicySpec, namespace: str,
                   name: str, uid: str, pvc_root: str) -> str:  # fmt: skip
    """The run's own checkpoint prefix: as recorded in status; else as recorded on its job
    (a restart between creating the job and writing status); for a new job
    `<storage>/<namespace>/<run>/<uid>` (a run recreated under the same name never resumes,
    rotates or deletes the old one's checkpoints); for a job created before either record
    existed, the prefix it was given then (`<storage>/<namespace>/<run>`)."""
    rec = recorded_storage(status)
    if rec is not None:
        return str(rec["uri"])
    if job is not None:
        on_job = ((job.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_CHECKPOINT_URI)
        return str(on_job) if on_job else run_prefix(policy.storage, namespace, name, pvc_root)
    return run_prefix(policy.storage, namespace, name, pvc_root, uid)


def recorded_delete_with_run(status: dict[str, Any], job: dict[str, Any] | None, policy: CheckpointPolicySpec) -> bool:
    """deleteWithRun as fixed when the job was created (status, else the job's annotation); a
    job with neither record predates them: the policy's flag as it is."""
    rec = recorded_storage(status)
    if rec is not None:
        return bool(rec["deleteWithRun"])
    on_job = (((job or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DELETE_WITH_RUN)
    if on_job in ("true", "false"):
        return on_job == "true"
    return bool(policy.delete_with_run)


def _cost(spec: CPTRunSpec, settings: OperatorSettings) -> dict[str, float] | None:
    n = spec.base_model.parameters
    if not n:
        return None
    gpus = spec.resources.nodes * spec.resources.gpus_per_node
    est = estimate_compute(n, spec.training.total_tokens, gpus, settings.achieved_tflops_per_gpu, settings.price_per_gpu_hour)
    return {"flops": est.flops, "gpuHours": round(est.gpu_hours, 3), "cost": round(est.cost, 2)}


def _raw_suspend(spec: dict[str, Any]) -> bool:
    return spec.get("suspend") is True


def _stop_only(d: RunDecision, f: RunFacts) -> RunDecision:
    """A refused or not-ready run: an existing job is stopped when a stop is wanted, never started."""
    terminal = f.status.get("phase") in TERMINAL_PHASES
    if f.job is not None and (d.restart_limit is not None or (not terminal and (d.tenant_suspend or d.halted))):
        d.want_stopped = True
    return d


def _restart_limit(d: RunDecision, f: RunFacts, view: JobView | None) -> None:
    """Count the job's restarts (status.restarts) and fail the run over the limit; a run that
    failed so keeps its Failed message (and its job stopped) on every later look."""
    failed = c.find_condition(f.status.get("conditions"), c.FAILED)
    if failed is not None and failed.get("status") == "True" and failed.get("reason") == c.RESTART_LIMIT_EXCEEDED:
        d.restart_limit = str(failed.get("message") or "")
        return
    if view is None or f.status.get("phase") in TERMINAL_PHASES or view.finished:
        return
    r = count_restarts(f.status.get("restarts"), view.conditions, newest_checkpoint_step(f.status), f.settings.backoff_limit)
    if r.record is not None:
        d.status["restarts"] = r.record
    if r.exceeded:
        d.restart_limit = limit_message(r, view.name)
        d.restart_count = r


def decide_run(f: RunFacts) -> RunDecision:
    d = RunDecision(halted=f.status.get("phase") == "Halted", tenant_suspend=_raw_suspend(f.spec))
    view = JobView.from_body(f.job) if f.job is not None else None
    if f.job is not None and not controlled_by(f.job, f.uid):
        refusal = not_owned_refusal("PyTorchJob", view.name if view else "")
        d.updates += [(c.ACCEPTED, False, refusal.reason, refusal.message), (c.CREATED, False, c.NOT_CREATED, refusal.message)]
        d.phase = f.status.get("phase") or "Pending"
        d.job_ignored = True
        return d  # never mirrored, never controlled: not ours
    # 0. Restarts, whatever the spec says now: only the job and the status count.
    _restart_limit(d, f, view)

    # 1. The spec, as the API server stored it (schema and CEL ran there already).
    try:
        names.check_name(f.name, "CPTRun name")
        run = CPTRunSpec.model_validate(dict(f.spec))
    except (ValidationError, names.InvalidName) as exc:
        d.updates.append((c.ACCEPTED, False, c.INVALID_SPEC, str(exc)))
        d.phase = f.status.get("phase") or "Pending"
        return _stop_only(d, f)
    d.tenant_suspend = run.suspend

    # 2. What the platform allows; what may not change once the job exists.
    pool, refusal = check_pool(run, f.namespace, f.settings)
    refusal = (refusal or check_image(run, f.settings) or check_local_paths(run_local_locations(run), f.settings)
               or check_grace_period(run, f.settings))
    if refusal is None and pool is not None:
        refusal = check_scheduling(run, pool)
    changed = changed_immutable_fields(view.spec_digest, run.to_wire()) if view is not None else []
    if refusal is None and changed:
        refusal = Refusal(c.IMMUTABLE_FIELD_CHANGED,
                          f"{', '.join('spec.' + x for x in changed)} cannot change once the run has started; "
                          "revert the change or create a new CPTRun (the running job is left as it is)")  # fmt: skip

    d.status["progress"] = {**(f.status.get("progress") or {}), "totalSteps": total_steps(run), "totalTokens": run.training.total_tokens}
    cost = _cost(run, f.settings)
    if cost is not None:
        d.status["costEstimate"] = cost
    if pool is not None:
        # From the spec's parameter hint only: the operator never reads a tenant-named path.
        e = engine_choice(run, run.base_model.parameters, pool.gpu_memory_gib)
        d.status["engine"] = {"kind": e.kind, "zeroStage": e.zero_stage, "precision": e.precision, "compile": e.compile,
                              "reason": e.reason[:1024]}  # fmt: skip

    # 3. Dependencies, in the run's own namespace only.
    corpus_names = list(f.corpora)
    policy_name = run.checkpoint_policy_ref.name
    deps = decide_dependencies(f.namespace, corpus_names, f.corpora, policy_name, f.policy)

    if refusal is not None:
        d.updates.append((c.ACCEPTED, False, refusal.reason, refusal.message))
        if view is None:
            d.updates.append((c.CREATED, False, c.NOT_CREATED, refusal.message))
        d.phase = "Pending"
        return _stop_only(d, f)
    d.updates.append((c.ACCEPTED, True, c.SPEC_ACCEPTED, "the spec is valid and allowed"))

    if not deps.ready:
        d.updates.append((c.DEPENDENCIES_READY, False, deps.reason, deps.message))
        if view is None:
            d.updates.append((c.CREATED, False, c.NOT_CREATED, deps.message))
        # A running job keeps running (e.g. a replay corpus being re-curated): only new starts wait.
        d.phase = deps.phase
        return _stop_only(d, f)

    try:
        corpora = {n: CorpusSpec.model_validate(b["spec"]) for n, b in f.corpora.items() if b is not None}
        policy = CheckpointPolicySpec.model_validate(f.policy["spec"])  # type: ignore[index]
        outputs = {n: b["status"]["outputUri"] for n, b in f.corpora.items() if b and (b.get("status") or {}).get("outputUri")}
        uri = checkpoint_uri(f.status, f.job, policy, f.namespace, f.name, f.uid, f.settings.pvc_mount_root)
        rollbacks = [dict(r) for r in f.status.get("rollbacks") or []]
        inputs = RunInputs(f.namespace, f.name, f.uid, run, corpora, policy, outputs, checkpoint_uri=uri, rollbacks=rollbacks)
        d.secret = run_credentials(inputs)
    except (ValidationError, ConflictingCredentials) as exc:
        reason = c.CONFLICTING_CREDENTIALS if isinstance(exc, ConflictingCredentials) else c.INVALID_SPEC
        d.updates.append((c.ACCEPTED, False, reason, str(exc)))
        d.phase = "Pending"
        return _stop_only(d, f)

    d.accepted = True
    d.updates.append((c.DEPENDENCIES_READY, True, deps.reason, deps.message))
    d.configmap = render_trainer_configmap(inputs, f.settings)
    config_text = d.configmap["data"][TRAINER_CONFIG_KEY]
    recorded = recorded_storage(f.status)
    # Fixed once, with the job: where the checkpoints are and whether they go with the run.
    d.status["checkpointStorage"] = recorded or {"uri": uri, "deleteWithRun": recorded_delete_with_run(f.status, f.job, policy)}
    d.status["deleteCheckpointsWithRun"] = d.status["checkpointStorage"]["deleteWithRun"]

    if view is None:
        if f.status.get("phase") in TERMINAL_PHASES:  # finished and its job deleted: never train again
            d.phase = f.status["phase"]
            d.configmap = None
            if recorded is None:
                d.status.pop("checkpointStorage")
                d.status.pop("deleteCheckpointsWithRun")
            return d
        assert pool is not None
        suspend = initial_suspend(run.suspend, run.resources.queue_name, d.halted)
        d.job = render_pytorchjob(inputs, f.settings, pool, suspend, config_text)
        return d
    d.patch_config = view.config_digest != digest(config_text)  # a mutable field changed: the next trainer start reads it
    if d.restart_limit is not None:
        d.want_stopped = True  # failed by the restart limit: stopped, and kept stopped (even if Kueue or a tenant starts it)
    elif f.status.get("phase") not in TERMINAL_PHASES:
        d.want_stopped = run.suspend or d.halted
        if restarting(rollbacks) and not d.halted:
            # A rollback: stop the job with the new config written, and start it once its pods are
            # gone (the training operator says Suspended), so every pod reads the rollback's config.
            if d.patch_config or not (view.suspend and _suspended(view)):
                d.want_stopped = True
            else:
                rollbacks[-1]["outcome"] = "Resumed"
                d.status["rollbacks"] = rollbacks
    return d


def _suspended(view: JobView) -> bool:
    return any(x.get("type") == "Suspended" and x.get("status") == "True" for x in view.conditions)


def run_status(f: RunFacts, d: RunDecision, view: JobView | None, halted: bool) -> dict[str, Any]:
    """The run's desired status once the job is as the apply step left it (None: no job)."""
    updates = list(d.updates)
    phase = d.phase
    desired: dict[str, Any] = {"observedGeneration": f.generation, **d.status}
    if view is not None:
        managed = kueue_managed(view.queue_name, f.settings.kueue.manage_jobs_without_queue_name)
        state = job_state(view, d.tenant_suspend, managed)
        updates.append((c.CREATED, True, c.JOB_CREATED, f"PyTorchJob {view.name}"))
        for type_, (ok, reason, message) in (
            (c.RUNNING, state.running), (c.SUSPENDED, state.suspended), (c.SUCCEEDED, state.succeeded), (c.FAILED, state.failed),
        ):  # fmt: skip
            updates.append((type_, ok, reason, message))
        phase = state.phase
        if d.restart_limit is not None:  # stopped by the operator: the run failed, whatever the job says now
            updates += [(c.RUNNING, False, c.JOB_NOT_RUNNING, "stopped by the operator: restart limit exceeded"),
                        (c.SUSPENDED, False, c.NOT_SUSPENDED, ""), (c.FAILED, True, c.RESTART_LIMIT_EXCEEDED, d.restart_limit)]  # fmt: skip
            phase = "Failed"
        if d.accepted and d.configmap is not None:
            desired["startedAt"] = f.status.get("startedAt") or f.now
            desired["pytorchJobName"] = view.name
            desired["configMapName"] = d.configmap["metadata"]["name"]
            if phase in TERMINAL_PHASES and not f.status.get("completedAt"):
                desired["completedAt"] = f.now
    current_phase = f.status.get("phase")
    # A finished run stays finished: nothing here moves a terminal phase back.
    if current_phase in TERMINAL_PHASES and phase not in TERMINAL_PHASES:
        phase = current_phase
    elif halted and phase not in TERMINAL_PHASES:
        phase = "Halted"
    desired["phase"] = phase
    desired["conditions"] = conditions_with(list(f.status.get("conditions") or []), updates, f.generation, f.now)
    return desired



@dataclass(frozen=True)
class DeletionPlan:
    """Whether a deleted run's checkpoints go with it, and where; `reason` says why not."""

    prefix: str | None
    reason: str = ""


def decide_checkpoint_deletion(status: dict[str, Any], policy: CheckpointPolicySpec | None, policy_name: str,
                               namespace: str, name: str, uid: str, pvc_root: str) -> DeletionPlan:  # fmt: skip
    """Delete only what was promised when the job was created and is still promised now: the
    recorded flag and the policy's flag (read fresh) both true, and the policy still resolving
    to the recorded prefix (an edit of the policy's storage never redirects a deletion)."""
    if policy is None:
        return DeletionPlan(None, f"CheckpointPolicy {policy_name!r} is gone: the checkpoints cannot be located and were kept")
    rec = recorded_storage(status)
    if rec is None:  # a run whose job was created before the record existed: its legacy prefix
        rec = {"uri": run_prefix(policy.storage, namespace, name, pvc_root), "deleteWithRun": bool(status.get("deleteCheckpointsWithRun"))}
    if not rec["deleteWithRun"]:
        return DeletionPlan(None, "deleteWithRun was false when the run's job was created: the checkpoints were kept")
    if not policy.delete_with_run:
        return DeletionPlan(None, f"CheckpointPolicy {policy_name!r} now has deleteWithRun false: the checkpoints were kept")
    now = {run_prefix(policy.storage, namespace, name, pvc_root, uid), run_prefix(policy.storage, namespace, name, pvc_root)}
    if rec["uri"] not in now:
        return DeletionPlan(None, f"CheckpointPolicy {policy_name!r} no longer points at {rec['uri']} (its storage changed "
                                  "since the run started): the checkpoints were kept")  # fmt: skip
    return DeletionPlan(str(rec["uri"]))
