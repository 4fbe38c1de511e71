"""The local executor: what a curation Job and a PyTorchJob are in local mode.

Each is a `cpt-trainer` subprocess on this machine, started from the same rendered config
the cluster mode mounts from a ConfigMap. Its state is reported in the shapes the cluster
objects have — a batch/v1 Job status for curation, PyTorchJob conditions for training — so
the operator's own decision functions (`decide.corpus_phase`, `decide.run_phase`) read it
unchanged. Suspending a job sends SIGTERM: the trainer finishes its step, checkpoints and
exits, as a suspended PyTorchJob's pods do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cpt_operator.conditions import now_rfc3339


@dataclass
class LocalJob:
    """One subprocess standing in for a Job or PyTorchJob."""

    name: str
    kind: str  # "curate" or "train"
    config_path: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    started_at: float | None = None
    suspended: bool = False
    conditions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _condition(self, type_: str, message: str) -> None:
        self.conditions.append({"type": type_, "status": "True", "message": message, "lastTransitionTime": now_rfc3339()})

    def pytorchjob_body(self) -> dict[str, Any]:
        """This job as the PyTorchJob the operator would read (metadata, runPolicy, conditions)."""
        self._refresh()
        return {"metadata": {"name": self.name}, "spec": {"runPolicy": {"suspend": self.suspended}}, "status": {"conditions": self.conditions}}

    def job_status(self) -> dict[str, Any]:
        """This job as a batch/v1 Job status."""
        self._refresh()
        rc = self.returncode
        if rc is None:
            return {"active": 1, "succeeded": 0}
        if rc == 0:
            return {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        return {"failed": 1, "conditions": [{"type": "Failed", "status": "True", "message": self.failure_message()}]}

    def _refresh(self) -> None:
        rc = self.returncode
        types = {c["type"] for c in self.conditions}
        if rc is None and self.proc is not None and "Running" not in types:
            self._condition("Running", f"process {self.proc.pid} is running")
        if rc is not None and not types & {"Succeeded", "Failed", "Suspended"}:
            if self.suspended:
                self._condition("Suspended", "stopped after a checkpoint")
            elif rc == 0:
                self._condition("Succeeded", "the trainer finished")
            else:
                self._condition("Failed", self.failure_message())

    def failure_message(self) -> str:
        """The last error line of the job's log (the trainer prints one clear line)."""
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        errors = [line for line in lines if "Error" in line or "error" in line or line.startswith("cpt-trainer")]
        last = (errors or lines or ["no output"])[-1]
        return f"exit code {self.returncode}: {last[-500:]}"


class LocalExecutor:
    """Starts, watches and stops local jobs; one folder per run holds configs and logs."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.jobs: dict[str, LocalJob] = {}

    def start(self, name: str, kind: str, config: BaseModel, run_dir: Path, extra_args: list[str] | None = None) -> LocalJob:
        """Write the rendered config and start `cpt-trainer KIND --config FILE` (idempotent per name)."""
        if name in self.jobs and self.jobs[name].returncode is None:
            return self.jobs[name]
        run_dir.mkdir(parents=True, exist_ok=True)
        config_path = run_dir / f"{kind}-config.json"
        config_path.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
        log_path = run_dir / f"{kind}.log"
        job = LocalJob(name, kind, config_path, log_path)
        job.conditions.append({"type": "Created", "status": "True", "message": "process started", "lastTransitionTime": now_rfc3339()})
        log = open(log_path, "a", encoding="utf-8")
        job.proc = subprocess.Popen(
            [sys.executable, "-m", "cpt_trainer.cli", kind, "--config", str(config_path), *(extra_args or [])],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
        )  # fmt: skip
        job.started_at = time.time()
        self.jobs[name] = job
        return job

    def run(self, args: list[str], log_path: Path) -> int:
        """Run one `cpt-trainer` command to completion (bootstrap steps)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as log:
            return subprocess.call([sys.executable, "-m", "cpt_trainer.cli", *args], stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def suspend(self, name: str, timeout: float = 120.0) -> None:
        """Stop a job the way a suspended PyTorchJob stops: SIGTERM, the trainer checkpoints and exits."""
        job = self.jobs.get(name)
        if job is None or job.proc is None or job.returncode is not None:
            if job is not None:
                job.suspended = True
            return
        job.suspended = True
        job.proc.send_signal(signal.SIGTERM)
        try:
            job.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            job.proc.kill()
            job.proc.wait()

    def stop_all(self) -> None:
        for name in list(self.jobs):
            self.suspend(name)
