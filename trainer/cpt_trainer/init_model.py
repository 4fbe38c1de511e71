"""`cpt-trainer init-model`: a tokenizer trained on local text and a randomly initialised tiny
Llama saved beside it — the starting point local mode pretrains into its base model.

    cpt-trainer init-model --texts DIR --tokenizer-out DIR --model-out DIR [--vocab-size 4096] ...

Nothing is downloaded: the tokenizer is trained here (byte-level BPE), the model built from a config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cpt_trainer.contract.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--texts", required=True, help="folder of .txt files to train the tokenizer on")
    parser.add_argument("--tokenizer-out", required=True, help="where the tokenizer is saved")
    parser.add_argument("--model-out", required=True, help="where the random model (and a copy of the tokenizer) is saved")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=352)
    parser.add_argument("--max-positions", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)


def run_init_model(args: argparse.Namespace) -> int:
    from cpt_trainer.tinymodel import build_tiny_llama, train_tokenizer

    files = sorted(Path(args.texts).glob("*.txt"))
    if not files:
        raise ConfigError(f"--texts {args.texts}: no .txt files to train a tokenizer on")
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
    tokenizer = train_tokenizer(texts, args.tokenizer_out, vocab_size=args.vocab_size)
    tokenizer.save_pretrained(args.model_out)
    build_tiny_llama(
        len(tokenizer),
        args.model_out,
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        intermediate_size=args.intermediate_size,
        max_position_embeddings=args.max_positions,
        seed=args.seed,
    )
    return 0
