"""`cpt-trainer`: the trainer image's entry point (`train`, `launch`, `curate`, `init-model`).

Subcommands import their heavy modules lazily so `--help` and config errors are fast.
Exit codes: 0 success, 2 invalid config or input (clear message, no traceback),
200 a communication error (a peer rank or node lost, a collective timed out: transient),
1 anything else; `train` exits 143 when it stopped on SIGTERM after a checkpoint, and
`launch` (train/launcher.py) exits with its ranks' root cause. Under the elastic agent
(TORCHELASTIC_ERROR_FILE set) a failing subcommand also writes its error file for `launch`.
"""

from __future__ import annotations

import argparse
import os
import sys

# Runs never reach a model hub: every model, tokenizer, corpus and task file is staged from the
# run's own URIs, so a hub lookup (transformers, datasets, lm_eval) must fail at once, not download.
# Set before any of them is imported (they read these at import); ranks inherit them.
for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")


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
    from cpt_trainer.train.launcher import (
        is_communication_error,
        record_communication_failure,
        record_exception,
        record_rank_error,
    )

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
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            raise
        if is_communication_error(exc):
            # Transient (the surviving rank of a lost peer or node): >= 128 so the PyTorchJob retries
            # it; the error file carries the line, so `launch` reports it when it is the root cause.
            return record_communication_failure(f"cpt-trainer {args.command}", exc)
        record_exception(exc)
        raise


if __name__ == "__main__":
    sys.exit(main())
