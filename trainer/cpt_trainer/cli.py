"""`cpt-trainer`: the trainer image's entry point (`train`, `curate`, `init-model`).

Subcommands import their heavy modules lazily so `--help` and config errors are fast.
Exit codes: 0 success, 2 invalid config or input (clear message, no traceback),
1 anything else.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpt-trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="continued pretraining from a TrainerConfig JSON file")
    train.add_argument("--config", required=True, help="path of the TrainerConfig JSON file")
    curate = sub.add_parser("curate", help="curate a corpus from a CurationConfig JSON file")
    curate.add_argument("--config", required=True, help="path of the CurationConfig JSON file")
    from cpt_trainer.init_model import add_arguments

    add_arguments(sub.add_parser("init-model", help="train a tokenizer on local text and build a random tiny Llama"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cpt_trainer.contract.config import ConfigError

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
        print(f"cpt-trainer {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
