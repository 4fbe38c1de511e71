"""`cpt-trainer`: the trainer image's entry point (`train`, `launch`, `curate`, `init-model`).

Subcommands import their heavy modules lazily so `--help` and config errors are fast.
Exit codes: 0 success, 2 invalid config or input (clear message, no traceback),
1 anything else; `train` exits 143 when it stopped on SIGTERM after a checkpoint, and
`launch` (train/launcher.py) exits with its ranks' root cause. Under the elastic agent
(TORCHELASTIC_ERROR_FILE set) a failing subcommand also writes its error file for `launch`.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpt-trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="continued pretraining from a TrainerConfig JSON file")
    train.add_argument("--config", required=True, help="path of the TrainerConfig JSON file")
    sub.add_parser(
        "launch", add_help=False,
        help="run `train` on every rank like torchrun, exiting with the root cause: "
             "cpt-trainer launch [torchrun options] -- train --config FILE",
    )  # fmt: skip
    curate = sub.add_parser("curate", help="curate a corpus from a CurationConfig JSON file")
    curate.add_argument("--config", required=True, help="path of the CurationConfig JSON file")
    from cpt_trainer.init_model import add_arguments

    add_arguments(sub.add_parser("init-model", help="train a tokenizer on local text and build a random tiny Llama"))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["launch"]:  # its options are torchrun's: parsed by torch's own parser
        from cpt_trainer.train.launcher import run_launch

        return run_launch(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command != "train":
        return _run(args)
    from cpt_trainer.train.distributed import leave, multi_process

    try:
        code = _run(args)
    except SystemExit as exc:
        leave(exc.code if isinstance(exc.code, int) else 1)
        raise
    except BaseException:
        # A rank of a multi-process run prints the traceback itself: it leaves without the
        # interpreter's teardown (distributed.leave); one process re-raises as usual.
        if multi_process():
            import traceback

            traceback.print_exc()
            leave(1)
        raise
    return leave(code)


def _run(args: argparse.Namespace) -> int:
    from cpt_trainer.contract.config import ConfigError
    from cpt_trainer.train.launcher import record_exception, record_rank_error

    try:
        if args.command == "train":
            from cpt_trainer.train.main import run_train

            return run_train(args.config)
        if args.command == "init-model":
            from cpt_trainer.init_model import run_init_model

            return run_init_model(args)
        from cpt_trainer.curate.main import run_curate

        return run_curate(args.config)
    except ConfigError as exc:
        line = f"cpt-trainer {args.command}: {exc}"
        print(line, file=sys.stderr, flush=True)
        record_rank_error(line)
        return 2
    except BaseException as exc:
        if not isinstance(exc, (SystemExit, KeyboardInterrupt)):
            record_exception(exc)
        raise


if __name__ == "__main__":
    sys.exit(main())
