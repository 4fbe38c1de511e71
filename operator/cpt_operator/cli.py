"""`cpt`: the tenant's command line.

    cpt plan FILES...        validate resources together and print the plan
    cpt run-local DIR        run DIR's manifests end to end on this machine (local mode)
    cpt report RUN_DIR       regenerate a local run's report

Exit codes: 0 fine; 1 the plan does not work (e.g. the run does not fit in GPU memory);
2 bad input (unreadable files, malformed YAML, invalid resources, unresolved
references), always one clear line per problem and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from cpt_operator.api.reading import clip
from cpt_operator.api.resources import InvalidResource, ManifestError, load_manifests
from cpt_operator.plan_report import PlanError, build_plans, format_plan, misfit_message
from cpt_operator.settings import load_settings


def _plan(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.settings)
    except (OSError, ValueError) as exc:
        print(f"cpt plan: cannot read operator settings: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.tflops is not None:
        settings.achieved_tflops_per_gpu = args.tflops
    if args.price is not None:
        settings.price_per_gpu_hour = args.price
    try:
        resources = load_manifests(args.files, default_namespace=args.namespace)
        plans = build_plans(resources, settings)
    except ManifestError as exc:
        print(clip(f"cpt plan: {exc}"), file=sys.stderr)
        return 2
    except InvalidResource as exc:
        for line in exc.lines():
            print(f"cpt plan: {line}", file=sys.stderr)
        return 2
    except PlanError as exc:
        for line in exc.problems:
            print(clip(f"cpt plan: {line}"), file=sys.stderr)
        return 2
    for p in plans:
        for warning in p.warnings:
            print(clip(f"cpt plan: warning: CPTRun {p.run.namespace}/{p.run.name}: {warning}"), file=sys.stderr)
    if args.output == "json":
        print(json.dumps([p.as_dict() for p in plans], indent=2))
    else:
        print("\n\n".join(format_plan(p, show_objects=not args.no_objects) for p in plans))
    misfits = [p for p in plans if p.memory is not None and not p.memory.fits]
    for p in misfits:
        print(clip(f"cpt plan: {misfit_message(p)}", limit=2000), file=sys.stderr)
    return 1 if misfits else 0


def _run_local(args: argparse.Namespace) -> int:
    from pathlib import Path

    import signal

    from cpt_operator.local.runner import LocalRunError, LocalRunner

    def stop(signum, _frame):  # SIGTERM stops as cleanly as Ctrl-C: the trainer checkpoints first
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    try:
        states = LocalRunner(Path(args.dir), Path(args.workdir), poll_seconds=args.poll).run()
    except (ManifestError, LocalRunError) as exc:
        print(clip(f"cpt run-local: {exc}"), file=sys.stderr)
        return 2
    except InvalidResource as exc:
        for line in exc.lines():
            print(f"cpt run-local: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cpt run-local: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    for state in states:
        status = state.get("status", {})
        print(f"{state['run']['namespace']}/{state['run']['name']}: {status.get('phase')}")
    print(f"cpt run-local: done in {time.monotonic() - started:.0f} s")
    return 0


def _report(args: argparse.Namespace) -> int:
    from cpt_operator.local.report import write_report

    try:
        paths = write_report(args.run_dir)
    except FileNotFoundError as exc:
        print(f"cpt report: {exc}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpt", description="cpt-operator's command line for tenants.")
    sub = parser.add_subparsers(dest="command", required=True)
    plan = sub.add_parser("plan", help="validate Corpus/CheckpointPolicy/CPTRun manifests together and print the plan")
    plan.add_argument("files", nargs="+", help="YAML files or folders of them")
    plan.add_argument("--settings", help="operator settings YAML (node pools, trainer image); default: built-in")
    plan.add_argument("--namespace", default="default", help="namespace of resources that name none (default: default)")
    plan.add_argument("--tflops", type=float, help="achieved TFLOP/s per GPU for the estimate (default: settings)")
    plan.add_argument("--price", type=float, help="price per GPU-hour (default: settings)")
    plan.add_argument("--output", choices=("text", "json"), default="text", help="output format")
    plan.add_argument("--no-objects", action="store_true", help="do not print the objects the operator would create")
    plan.set_defaults(func=_plan)
    local = sub.add_parser("run-local", help="run a folder of manifests end to end on this machine (no cluster)")
    local.add_argument("dir", help="folder of Corpus/CheckpointPolicy/CPTRun manifests (e.g. examples/local)")
    local.add_argument("--workdir", default=".cpt-local", help="where volumes, runs and caches live (default: .cpt-local)")
    local.add_argument("--poll", type=float, default=1.0, help="seconds between control-loop passes (default: 1)")
    local.set_defaults(func=_run_local)
    report = sub.add_parser("report", help="regenerate a local run's report (report.md, report.png, report.json)")
    report.add_argument("run_dir", help="a run folder of `cpt run-local` (WORKDIR/runs/NAMESPACE/RUN)")
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
