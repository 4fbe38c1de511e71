"""The per-run report of local mode: `report.png` (top: domain perplexity and general score
against step, kept checkpoints, the best one and any halt marked; middle, when the run has a
benchmark: its accuracy with +-1 stderr, the baseline and the forgetting threshold's band;
bottom: training loss and learning rate), `report.md` (settings,
curation counts, tokens, throughput, kept checkpoints and why, the halt decision) and
`report.json` (the plotted series, so tests check data rather than pixels).

`cpt report RUN_DIR` regenerates all three from `RUN_DIR/state.json`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"


def series_from_status(status: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Evaluations by step (baseline first), from the checkpoint records and evaluations in status."""
    points: dict[int, dict[str, Any]] = {}
    if baseline:
        points[0] = {"step": 0, "domain_perplexity": baseline.get("domain_perplexity"), "general_score": baseline.get("general_score")}
    for record in status.get("checkpoints") or []:
        points.setdefault(int(record["step"]), {"step": int(record["step"])}).update(
            {"domain_perplexity": record.get("domainPerplexity"), "general_score": record.get("generalScore")}
        )
    for ev in status.get("evaluations") or []:
        p = points.setdefault(int(ev["step"]), {"step": int(ev["step"])})
        if p.get("domain_perplexity") is None:
            p["domain_perplexity"] = ev.get("domainPerplexity")
        if p.get("general_score") is None and ev.get("generalScore") is not None:
            p["general_score"] = ev.get("generalScore")
    ordered = [points[s] for s in sorted(points)]
    kept = [
        {"step": int(r["step"]), "kept_for": r.get("keptFor", [])}
        for r in status.get("checkpoints") or []
        if not r.get("deleted")
    ]
    halt = status.get("halt") if status.get("phase") == "Halted" else None
    return {
        "steps": [p["step"] for p in ordered],
        "domain_perplexity": [p.get("domain_perplexity") for p in ordered],
        "general_score": [p.get("general_score") for p in ordered],
        "kept_checkpoints": kept,
        "best_checkpoint": (status.get("bestCheckpoint") or {}).get("step"),
        "halt_step": halt.get("step") if halt else None,
        "phase": status.get("phase"),
        "rollbacks": [{"attempt": r.get("attempt"), "from_step": r.get("fromStep"), "at_step": r.get("atStep"),
                       "alpha": r.get("alpha"), "learning_rate": r.get("learningRate"), "outcome": r.get("outcome")}
                      for r in status.get("rollbacks") or []],  # fmt: skip
    }


def history_series(history: dict[str, Any] | None) -> dict[str, Any]:
    """Benchmarks (the general evals with a stderr: accuracies) and the training curve, from the
    local runner's scrape history."""
    history = history or {}
    benchmarks: dict[str, dict[str, Any]] = {}
    for ev in history.get("evals") or []:
        for name, se in (ev.get("stderr") or {}).items():
            b = benchmarks.setdefault(name, {"steps": [], "accuracy": [], "stderr": [], "baseline": None})
            if name in (ev.get("scores") or {}):
                b["steps"].append(ev["step"])
                b["accuracy"].append(ev["scores"][name])
                b["stderr"].append(se)
            b["baseline"] = (ev.get("baseline") or {}).get(name, b["baseline"])
    training = history.get("training") or []
    return {
        "benchmarks": benchmarks,
        "training": {"steps": [t[0] for t in training], "loss": [t[1] for t in training], "learning_rate": [t[2] for t in training]},
    }


def _mark(ax, series: dict[str, Any], legend: bool) -> None:
    for i, k in enumerate(series["kept_checkpoints"]):
        ax.axvline(k["step"], color="tab:green", alpha=0.3, lw=1, label="kept checkpoint" if legend and i == 0 else None)
    if series["best_checkpoint"] is not None:
        ax.axvline(series["best_checkpoint"], color="tab:green", lw=2.5,
                   label=f"best (step {series['best_checkpoint']})" if legend else None)  # fmt: skip
    if series["halt_step"] is not None:
        ax.axvline(series["halt_step"], color="tab:red", lw=2, ls=":", label=f"halted (step {series['halt_step']})" if legend else None)
    for r in series.get("rollbacks") or []:
        if r.get("at_step") is not None:
            ax.axvline(r["at_step"], color="tab:orange", lw=2, ls="-.",
                       label=f"rollback {r['attempt']}: to step {r['from_step']}" if legend else None)  # fmt: skip


def _plot(series: dict[str, Any], path: Path, title: str, threshold: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = series.get("benchmarks") or {}
    training = series.get("training") or {"steps": []}
    rows = 1 + bool(benchmarks) + bool(training["steps"])
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.2 * rows + 1), dpi=100, sharex=True, squeeze=False)
    ax1 = axes[0][0]
    steps = series["steps"]
    dom = [(s, v) for s, v in zip(steps, series["domain_perplexity"]) if v is not None]
    gen = [(s, v) for s, v in zip(steps, series["general_score"]) if v is not None]
    if dom:
        ax1.plot(*zip(*dom), "o-", color="tab:blue", label="domain perplexity")
    ax1.set_ylabel("domain perplexity", color="tab:blue")
    ax2 = ax1.twinx()
    if gen:
        ax2.plot(*zip(*gen), "s--", color="tab:orange", label="general score (perplexity)")
    ax2.set_ylabel("general score (perplexity, lower is better)", color="tab:orange")
    _mark(ax1, series, legend=True)
    lines = ax1.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax1.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax1.set_title(title)
    row = 1
    if benchmarks:
        ax = axes[row][0]
        for name, b in benchmarks.items():
            ax.errorbar(b["steps"], b["accuracy"], yerr=b["stderr"], fmt="o-", capsize=3, label=f"{name} accuracy (+-1 stderr)")
            if b["baseline"] is not None:
                ax.axhline(b["baseline"], color="grey", lw=1, label=f"{name} baseline")
                if threshold is not None:
                    ax.axhspan(0, b["baseline"] * (1 - threshold), color="tab:red", alpha=0.08,
                               label=f"{name}: more than {threshold:.0%} below baseline")  # fmt: skip
        ax.set_ylim(0, 1)
        ax.set_ylabel("benchmark accuracy (higher is better)")
        _mark(ax, series, legend=False)
        ax.legend(loc="lower left", fontsize=8)
        row += 1
    if training["steps"]:
        ax = axes[row][0]
        ax.plot(training["steps"], training["loss"], color="tab:purple", label="training loss")
        ax.set_ylabel("training loss", color="tab:purple")
        lr_ax = ax.twinx()
        lr_ax.plot(training["steps"], training["learning_rate"], color="tab:brown", ls="--", label="learning rate")
        lr_ax.set_ylabel("learning rate", color="tab:brown")
        _mark(ax, series, legend=False)
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _markdown(state: dict[str, Any], series: dict[str, Any]) -> str:
    status = state.get("status", {})
    run = state.get("run", {})
    lines = [f"# CPT run `{run.get('namespace')}/{run.get('name')}` — {status.get('phase')}", ""]
    lines += ["## Settings", ""]
    for key, value in (state.get("settings") or {}).items():
        lines.append(f"- {key}: `{value}`")
    lines += ["", "## Curation", ""]
    for corpus in state.get("corpora", []):
        lines.append(f"- **{corpus['name']}** ({corpus.get('role', '')}): {corpus.get('documents')} documents, "
                     f"{corpus.get('tokens')} tokens, {corpus.get('shards')} shard(s)")  # fmt: skip
        for stage in corpus.get("stages", []):
            lines.append(f"  - {stage['name']}: {stage.get('input')} in, {stage.get('removed')} removed")
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    lines += ["", "## Training", "",
              f"- steps: {progress.get('step')} of {progress.get('totalSteps')}; tokens seen: {progress.get('tokens')}",
              f"- throughput: {_fmt(metrics.get('tokensPerSecond'), ',.0f')} tokens/s (last reading)",
              f"- wall time: {_fmt(state.get('wall_seconds'), '.1f')} s",
              "", "## Evaluations", "", "| step | domain perplexity | general score |", "|---:|---:|---:|"]  # fmt: skip
    for s, d, g in zip(series["steps"], series["domain_perplexity"], series["general_score"]):
        lines.append(f"| {s} | {_fmt(d)} | {_fmt(g)} |")
    for name, b in (series.get("benchmarks") or {}).items():
        lines += ["", f"Benchmark `{name}` (accuracy, higher is better; baseline {_fmt(b['baseline'])}):", "",
                  "| step | accuracy | stderr |", "|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {s} | {_fmt(a)} | {_fmt(e)} |" for s, a, e in zip(b["steps"], b["accuracy"], b["stderr"])]
    lines += ["", "## Checkpoints kept", ""]
    for k in series["kept_checkpoints"]:
        lines.append(f"- step {k['step']}: {', '.join(k['kept_for']) or 'pending rotation'}")
    best = status.get("bestCheckpoint")
    lines.append("")
    lines.append(f"Best checkpoint: step {best['step']} ({best.get('metric')} {_fmt(best.get('value'))}) at `{best['uri']}`" if best else "Best checkpoint: none eligible")
    lines += ["", "## Forgetting monitor", ""]
    for r in series.get("rollbacks") or []:
        lines.append(f"- Rollback {r['attempt']} at step {r['at_step']}: back to step {r['from_step']}, mixing.alpha "
                     f"{_fmt(r['alpha'], '.3g')}, learningRate {_fmt(r['learning_rate'], '.3g')} ({r['outcome']})")  # fmt: skip
    forgetting = next((c for c in status.get("conditions", []) if c["type"] == "ForgettingThresholdExceeded"), None)
    if status.get("phase") == "Halted" and status.get("halt"):
        h = status["halt"]
        lines.append(f"Halted at step {h.get('step')}: general regression {_fmt(h.get('regression'), '.2%')} over the "
                     f"{_fmt(h.get('threshold'), '.1%')} threshold.")  # fmt: skip
    if forgetting:
        lines.append(f"{forgetting['reason']}: {forgetting['message']}")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """(Re)generate report.png, report.md and report.json from RUN_DIR/state.json."""
    run_dir = Path(run_dir)
    state_path = run_dir / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(f"{state_path} not found: is {run_dir} a run folder of `cpt run-local`?")
    state = json.loads(state_path.read_text())
    series = {**series_from_status(state.get("status", {}), state.get("baseline")), **history_series(state.get("history"))}
    paths = {"json": run_dir / "report.json", "png": run_dir / "report.png", "md": run_dir / "report.md"}
    paths["json"].write_text(json.dumps(series, indent=2))
    run = state.get("run", {})
    _plot(series, paths["png"], f"{run.get('namespace')}/{run.get('name')}", (state.get("settings") or {}).get("forgettingThreshold"))
    paths["md"].write_text(_markdown(state, series))
    return paths
