"""`cpt run-local DIR`: the cluster pipeline on one machine.

The same manifests a cluster takes, validated and rendered by the same code; the local
executor stands in for the curation Job and the PyTorchJob; the same control-loop pass
(`control.run_control.control_step`) reads the trainer's metrics endpoint directly,
rotates checkpoints by the CheckpointPolicy and halts a run that forgets. PVC claims map
to folders under `WORKDIR/pvc/<claim>`; each run's state, logs and report go to
`WORKDIR/runs/<namespace>/<run>/`. Ctrl-C stops cleanly (the trainer checkpoints); running
the same command again resumes.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cpt_operator.api.checkpoint_policy import CheckpointPolicySpec
from cpt_operator.api.corpus import CorpusSpec
from cpt_operator.api.cptrun import CPTRunSpec
from cpt_operator.api.resources import Resource, load_manifests
from cpt_operator.control.prometheus import MetricsUnavailable, RunMetrics, scrape_run_metrics
from cpt_operator.control.run_control import ControlInputs, control_step
from cpt_operator.control.storage import LocalCheckpointStore
from cpt_operator.decide.corpus_phase import corpus_job_state, parse_curation_report
from cpt_operator.decide.run_phase import JobView, job_state
from cpt_operator.local.executor import LocalExecutor
from cpt_operator.local.report import STATE_FILE, write_report
from cpt_operator.plan_report import PlanError, build_plans
from cpt_operator.render.trainer_config import render_curation_config, render_trainer_config
from cpt_operator.settings import NodePool, OperatorSettings
from cpt_trainer.contract import metrics as names
from cpt_trainer.contract.config import BatchConfig, CheckpointConfig, CorpusInput, DataConfig, EvalConfig, ModelConfig
from cpt_trainer.contract.config import MetricsConfig, OptimConfig, RunIdentity, TrainerConfig

logger = logging.getLogger("cpt.local")

LOCAL_POOL = "local"
BOOTSTRAP_FILE = Path("bootstrap") / "base-model.yaml"


def record_history(history: dict[str, Any], m: RunMetrics) -> None:
    """What the report plots beyond status: the training loss and learning rate by step, and
    every general score (with a benchmark's stderr and the baseline) by evaluation step."""
    step, loss, lr = m.get(names.STEP), m.get(names.TRAIN_LOSS), m.get(names.LEARNING_RATE)
    training = history.setdefault("training", [])
    if step is not None and loss is not None and (not training or training[-1][0] < step):
        training.append([int(step), loss, lr])
        if len(training) > 4000:  # a long local run: keep the plot's resolution, not every step
            training[:] = training[::2]
    eval_step = m.get(names.EVAL_STEP)
    evals = history.setdefault("evals", [])
    if eval_step is not None and m.general_scores and (not evals or evals[-1]["step"] < eval_step):
        evals.append({"step": int(eval_step), "scores": dict(m.general_scores), "stderr": dict(m.general_stderr),
                      "baseline": dict(m.baseline_general_scores)})  # fmt: skip


def trim_history(history: dict[str, Any], from_step: int, at_step: int | None) -> None:
    """A rollback: the abandoned branch's points go (training restarts at `from_step`); the
    rollback itself is kept for the report."""
    history["training"] = [t for t in history.get("training") or [] if t[0] <= from_step]
    history["evals"] = [e for e in history.get("evals") or [] if e["step"] <= from_step]
    history.setdefault("rollbacks", []).append({"from_step": from_step, "at_step": at_step})


class LocalRunError(Exception):
    """A local run that cannot go on; the message says why and what to do."""


def local_settings(workdir: Path) -> OperatorSettings:
    """Operator settings of local mode: one `local` pool, PVCs as folders under WORKDIR/pvc."""
    return OperatorSettings(
        node_pools=[NodePool(name=LOCAL_POOL, gpus_per_node=1, gpu_memory_gib=4.0, cpu="2", memory="4Gi", allowed_namespaces=["*"])],
        pvc_mount_root=str((workdir / "pvc").resolve()),
        allowed_local_roots=["/"],  # local mode reads this machine's own files: that is its point
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _say(message: str) -> None:
    print(f"[cpt] {message}", flush=True)


class LocalRunner:
    def __init__(self, directory: Path, workdir: Path, poll_seconds: float = 1.0, show_progress: bool | None = None):
        self.directory = directory
        self.workdir = workdir.resolve()
        self.settings = local_settings(self.workdir)
        self.pvc_root = Path(self.settings.pvc_mount_root)
        self.poll_seconds = poll_seconds
        self.show_progress = sys.stderr.isatty() if show_progress is None else show_progress
        cache = self.workdir / "cache"
        self.executor = LocalExecutor(self.workdir, env={"CPT_CACHE_DIR": str(cache), "TOKENIZERS_PARALLELISM": "false"})

    # ------------------------------------------------------------------ manifests

    def load(self) -> list[Resource]:
        resources = load_manifests([self.directory])
        self.ensure_benchmarks()  # before the plan checks: they read the task files
        try:
            build_plans(resources, self.settings)  # the same reference and pool checks as `cpt plan`
        except PlanError as exc:
            raise LocalRunError("; ".join(exc.problems)) from None
        return resources

    def volume(self, claim: str) -> Path:
        return self.pvc_root / claim

    # ------------------------------------------------------------------ curation

    def curate(self, corpus: Resource) -> dict[str, Any]:
        """Run (or reuse) the curation of one Corpus; returns its status as the operator writes it."""
        spec: CorpusSpec = corpus.spec  # type: ignore[assignment]
        config = render_curation_config(corpus.namespace, corpus.name, spec, pvc_root=str(self.pvc_root))
        run_dir = self.workdir / "corpora" / corpus.namespace / corpus.name
        config.termination_message_path = str(run_dir / "termination-log")  # not the host's /dev
        _say(f"curating Corpus {corpus.name} -> {config.output_uri}")
        started = time.time()
        job = self.executor.start(f"corpus/{corpus.namespace}/{corpus.name}", "curate", config, run_dir)
        assert job.proc is not None
        job.proc.wait()
        state = corpus_job_state(job.job_status(), completions=1)
        if state.phase != "Ready":
            raise LocalRunError(f"curation of Corpus {corpus.name} failed: {state.message} (log: {job.log_path})")
        report_path = Path(config.output_uri) / "status.json"
        report = parse_curation_report(report_path.read_text() if report_path.is_file() else None)
        _say(f"Corpus {corpus.name} Ready in {time.time() - started:.0f} s: {report.get('documents')} documents, "
             f"{report.get('tokens')} tokens")  # fmt: skip
        return {"name": corpus.name, "phase": "Ready", **report}

    # ------------------------------------------------------------------ bootstrap

    def ensure_benchmarks(self) -> None:
        """Write the bootstrap's benchmark task files once: multiple-choice cloze items from the
        general text that ships with Python against the legal text that ships with the machine
        (`cpt_trainer.cloze_task`); nothing comes from a hub."""
        path = self.directory / BOOTSTRAP_FILE
        if not path.is_file():
            return
        cfg = yaml.safe_load(path.read_text()) or {}
        for name, bench in (cfg.get("benchmarks") or {}).items():
            out = self.volume(cfg["volume"]) / bench["path"]
            if out.is_file():
                continue
            from cpt_trainer.cloze_task import cloze_items, write_task_file
            from cpt_trainer.shipped_text import general_documents, legal_documents

            items = cloze_items(general_documents(), legal_documents(limit=2000), count=int(bench["items"]))
            write_task_file(items, out)
            _say(f"wrote benchmark {name}: {len(items)} cloze items in {out}")

    def ensure_base_model(self, resources: list[Resource]) -> None:
        """Build the base model once (tokenizer, random init, pretraining on general text)."""
        path = self.directory / BOOTSTRAP_FILE
        runs = [r for r in resources if r.kind == "CPTRun"]
        missing = []
        for run in runs:
            loc = run.spec.base_model.location  # type: ignore[union-attr]
            folder = self.volume(loc.pvc.claim_name) / loc.pvc.path if loc.pvc else Path(loc.local.path) if loc.local else None
            if folder is not None and not (folder / "config.json").is_file():
                missing.append(folder)
        if not missing:
            return
        if not path.is_file():
            raise LocalRunError(f"base model {missing[0]} does not exist and {path} says nothing of how to build it")
        cfg = yaml.safe_load(path.read_text())
        vol = self.volume(cfg["volume"])
        _say(f"building the base model once (cached in {vol / cfg['model']['output']})")
        texts = vol / cfg["generalText"]
        if not texts.is_dir():
            from pydoc_data.topics import topics

            texts.mkdir(parents=True)
            for key in sorted(topics):
                (texts / f"{key}.txt").write_text(topics[key], encoding="utf-8")
        tokenizer = vol / cfg["tokenizer"]["path"]
        random_init = vol / cfg["model"]["randomInit"]
        log = self.workdir / "bootstrap" / "bootstrap.log"
        if not (random_init / "config.json").is_file():
            m = cfg["model"]
            rc = self.executor.run(
                ["init-model", "--texts", str(texts), "--tokenizer-out", str(tokenizer), "--model-out", str(random_init),
                 "--vocab-size", str(cfg["tokenizer"]["vocabSize"]), "--hidden-size", str(m["hiddenSize"]),
                 "--layers", str(m["layers"]), "--heads", str(m["heads"]), "--intermediate-size", str(m["intermediateSize"])],
                log,
            )  # fmt: skip
            if rc != 0:
                raise LocalRunError(f"building the random tiny model failed (log: {log})")
        pre = cfg["pretrain"]
        corpus = next((r for r in resources if r.kind == "Corpus" and r.name == pre["corpus"]), None)
        if corpus is None:
            raise LocalRunError(f"{path}: pretrain.corpus {pre['corpus']!r} is not a Corpus in {self.directory}")
        general = self.curate(corpus)
        steps = max(1, pre["totalTokens"] // (pre["globalBatchSize"] * pre["sequenceLength"]))
        ckpt_dir = self.workdir / "bootstrap" / "checkpoints"
        config = TrainerConfig(
            identity=RunIdentity(namespace="local", name="base-pretrain"),
            model=ModelConfig(uri=str(random_init), tokenizer_uri=str(tokenizer)),
            data=DataConfig(
                corpora=[CorpusInput(name=corpus.name, role="domain", weight=1.0, uri=general.get("outputUri") or
                                     render_curation_config(corpus.namespace, corpus.name, corpus.spec, pvc_root=str(self.pvc_root)).output_uri)],  # type: ignore[arg-type]  # noqa: E501
                alpha=1.0, sequence_length=pre["sequenceLength"],
            ),
            optim=OptimConfig(learning_rate=pre["learningRate"], min_learning_rate=pre["minLearningRate"], warmup_fraction=0.05),
            batch=BatchConfig(micro_batch_size=pre["microBatchSize"], global_batch_size=pre["globalBatchSize"], total_steps=steps),
            eval=EvalConfig(interval=steps, max_batches=4),
            checkpoint=CheckpointConfig(interval=steps, uri=str(ckpt_dir)),
            metrics=MetricsConfig(port=0),
        )  # fmt: skip
        config.engine.compile = False
        _say(f"pretraining the base model: {steps} steps on {corpus.name}")
        job = self.executor.start("bootstrap/base-pretrain", "train", config, self.workdir / "bootstrap")
        self._wait_with_progress(job, steps, "pretrain base model")
        if job.returncode != 0:
            raise LocalRunError(f"pretraining the base model failed: {job.failure_message()} (log: {job.log_path})")
        final = sorted(p for p in ckpt_dir.glob("step-*") if (p / "COMPLETE").is_file())[-1] / "model"
        out = vol / cfg["model"]["output"]
        out.mkdir(parents=True, exist_ok=True)
        for item in sorted(final.iterdir(), key=lambda p: p.name == "config.json"):  # config.json last: it marks the model whole
            shutil.copy2(item, out / item.name)

    def _wait_with_progress(self, job, total_steps: int, label: str) -> None:
        bar = self._bar(total_steps, label)
        while job.returncode is None:
            time.sleep(self.poll_seconds)
            if bar is not None:
                bar.refresh()
        if bar is not None:
            bar.close()

    def _bar(self, total: int, label: str):
        if not self.show_progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, desc=label, unit="step", dynamic_ncols=True)

    # ------------------------------------------------------------------ training

    def train(self, run: Resource, by_key: dict[tuple[str, str, str], Resource], corpora_status: list[dict[str, Any]]) -> dict[str, Any]:
        spec: CPTRunSpec = run.spec  # type: ignore[assignment]
        corpus_names = [c.name for c in spec.corpora] + [g.corpus for g in spec.evaluation.general_evals if g.corpus]
        corpora = {n: by_key[("Corpus", run.namespace, n)].spec for n in corpus_names}
        policy: CheckpointPolicySpec = by_key[("CheckpointPolicy", run.namespace, spec.checkpoint_policy_ref.name)].spec  # type: ignore
        port = _free_port()
        run_dir = self.workdir / "runs" / run.namespace / run.name

        def trainer_config(rollbacks: list[dict[str, Any]]) -> TrainerConfig:
            config = render_trainer_config(run.namespace, run.name, spec, corpora, policy, pvc_root=str(self.pvc_root),  # type: ignore[arg-type]
                                           rollbacks=rollbacks)  # fmt: skip
            config.metrics.port = port
            config.checkpoint.retain_file = None  # local mode deletes directly: the volume is this machine's disk
            config.termination_message_path = str(run_dir / "termination-log")  # not the host's /dev
            return config

        state_path = run_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        status: dict[str, Any] = state.get("status") or {"phase": "Pending"}
        config = trainer_config(list(status.get("rollbacks") or []))
        if status.get("phase") in ("Succeeded", "Halted"):
            _say(f"CPTRun {run.name} already {status['phase']}; remove {run_dir} to run it again")
            return state
        state.update(
            run={"namespace": run.namespace, "name": run.name},
            corpora=[{**c, "role": next((x.role for x in spec.corpora if x.name == c["name"]), "eval")} for c in corpora_status],
            settings={
                "alpha": spec.mixing.alpha, "learningRate": spec.training.learning_rate, "schedule": spec.training.schedule,
                "totalSteps": config.batch.total_steps, "sequenceLength": spec.training.sequence_length,
                "globalBatchSize": spec.training.global_batch_size, "evalInterval": spec.evaluation.interval,
                "saveInterval": policy.save_interval, "keepLastN": policy.keep_last_n, "keepBestK": policy.keep_best_k,
                "milestoneInterval": policy.milestone_interval, "forgettingThreshold": spec.evaluation.forgetting_threshold,
                "patience": spec.evaluation.patience, "action": spec.evaluation.action,
            },
        )  # fmt: skip
        status.setdefault("startedAt", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        store = LocalCheckpointStore(config.checkpoint.uri)
        _say(f"training CPTRun {run.name}: {config.batch.total_steps} steps, metrics on http://127.0.0.1:{port}/metrics")
        started = time.time() - float(state.get("wall_seconds") or 0.0)
        job = self.executor.start(f"run/{run.namespace}/{run.name}", "train", config, run_dir)
        url = f"http://127.0.0.1:{port}/metrics"
        bar = self._bar(config.batch.total_steps, run.name)
        last: RunMetrics | None = None
        passes_after_exit = 0
        try:
            while True:
                finished = job.returncode is not None
                metrics, error = None, None
                if not finished:
                    try:
                        metrics = scrape_run_metrics(url, run.namespace, run.name)
                        last = metrics if metrics.values else last
                        record_history(state.setdefault("history", {}), metrics)
                    except MetricsUnavailable as exc:
                        error = str(exc)
                elif last is not None:
                    # The trainer has exited: its last readings, with the step and tokens its final
                    # checkpoint recorded (a scrape can miss the very last step).
                    metrics = last
                    metrics.newest_timestamp = time.time()
                    newest = store.list_complete()[-1:]
                    final = store.read_metrics(newest[0].step) if newest else None
                    if final:
                        metrics.values[names.STEP.name] = float(final.get("step", 0))
                        metrics.values[names.TOKENS_SEEN.name] = float(final.get("tokens_seen", 0))
                out = control_step(ControlInputs(run.namespace, run.name, 1, spec, policy, status, metrics, error, store, time.time(), 120.0))
                status.update(out.status_patch)
                for kind, reason, message in out.events:
                    _say(f"Event {kind} {reason}: {message}")
                if out.halt:
                    _say(f"halting CPTRun {run.name}: suspending the trainer (it checkpoints first)")
                    self.executor.suspend(job.name)
                    continue  # one more pass records the final checkpoint
                if out.rollback is not None:
                    plan = out.rollback
                    _say(f"rolling back CPTRun {run.name} to step {plan.from_step} (attempt {plan.attempt}): mixing.alpha "
                         f"{plan.alpha:.3g}, learningRate {plan.learning_rate:.3g}")  # fmt: skip
                    self.executor.suspend(job.name)
                    rollbacks = list(status.get("rollbacks") or [])
                    job = self.executor.start(job.name, "train", trainer_config(rollbacks), run_dir)
                    rollbacks[-1]["outcome"] = "Resumed"
                    status["rollbacks"] = rollbacks
                    trim_history(state.setdefault("history", {}), plan.from_step, plan.at_step)
                    last, passes_after_exit = None, 0
                    continue
                view = job_state(JobView.from_body(job.pytorchjob_body()), tenant_suspend=False, queued=False)
                if status.get("phase") != "Halted":
                    status["phase"] = view.phase
                if bar is not None and status.get("progress"):
                    bar.n = status["progress"].get("step", 0)
                    m = status.get("metrics") or {}
                    bar.set_postfix(domain_ppl=m.get("domainPerplexity"), regression=m.get("generalRegression"), refresh=True)
                state["status"] = status
                state["wall_seconds"] = time.time() - started
                state["baseline"] = self._baseline(store) or state.get("baseline")
                self._save(state_path, state)
                if finished:
                    passes_after_exit += 1
                    if passes_after_exit == 2:  # a checkpoint is deleted once two passes list it
                        break
                    continue
                time.sleep(self.poll_seconds)
        except KeyboardInterrupt:
            _say("stopping: the trainer writes a checkpoint; run the same command again to resume")
            self.executor.suspend(job.name)
            state["status"] = status
            self._save(state_path, state)
            raise
        finally:
            if bar is not None:
                bar.close()
        if status.get("phase") == "Failed":
            raise LocalRunError(f"CPTRun {run.name} failed: {job.failure_message()} (log: {job.log_path})")
        if status.get("phase") == "Halted":
            status["completedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._save(state_path, state)
        paths = write_report(run_dir)
        _say(f"CPTRun {run.name} {status.get('phase')}: report {paths['md']} and {paths['png']}")
        return state

    @staticmethod
    def _baseline(store: LocalCheckpointStore) -> dict[str, Any] | None:
        for entry in store.list_complete():
            m = store.read_metrics(entry.step) or {}
            if m.get("baseline_domain_perplexity") is not None:
                scores = m.get("baseline_general_scores") or {}
                return {"domain_perplexity": m["baseline_domain_perplexity"], "general_score": max(scores.values()) if scores else None}
        return None

    @staticmethod
    def _save(path: Path, state: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)

    # ------------------------------------------------------------------ all

    def run(self) -> list[dict[str, Any]]:
        resources = self.load()
        self.ensure_base_model(resources)
        by_key = {r.key: r for r in resources}
        corpora_status = [self.curate(r) for r in resources if r.kind == "Corpus"]
        return [self.train(r, by_key, corpora_status) for r in resources if r.kind == "CPTRun"]
