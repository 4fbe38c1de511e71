"""Vocabulary extension for a domain: add tokens, resize embeddings, initialise new rows to the mean.

Every new row of the input embedding and (when untied) of the output embedding is set to
the mean of the old rows, never random (DESIGN section 1); with tied embeddings the one
shared matrix is set once. Chars/token on domain text is reported before and after.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtensionReport:
    added: list[str]
    old_vocab_size: int
    new_vocab_size: int
    chars_per_token_before: float
    chars_per_token_after: float


def chars_per_token(tokenizer, texts: Sequence[str]) -> float:
    """Characters per token over `texts` (higher: the tokenizer fits the text better)."""
    chars = sum(len(t) for t in texts)
    tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for t in texts)
    return chars / tokens if tokens else 0.0


def extend_vocabulary(model, tokenizer, tokens: Sequence[str], sample_texts: Sequence[str] = ()) -> ExtensionReport:
    """Add `tokens` to `tokenizer` (in place) and grow `model`'s embeddings, new rows = old mean."""
    before = chars_per_token(tokenizer, sample_texts) if sample_texts else 0.0
    old_size = len(tokenizer)
    wanted = [t for t in dict.fromkeys(tokens) if t]
    # Only words the tokenizer does not already hold as one token are new.
    new = [t for t in wanted if len(tokenizer.encode(t, add_special_tokens=False)) != 1]
    tokenizer.add_tokens(new)
    new_size = len(tokenizer)
    if new_size > old_size:
        if new_size > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(new_size, mean_resizing=False)
        _fill_new_rows_with_mean(model, old_size, new_size)
    after = chars_per_token(tokenizer, sample_texts) if sample_texts else 0.0
    report = ExtensionReport(new, old_size, new_size, before, after)
    logger.info(
        "tokenizer extension: %d tokens added (%d -> %d), chars/token %.3f -> %.3f",
        len(new), old_size, new_size, before, after,
    )
    return report


@torch.no_grad()
def _fill_new_rows_with_mean(model, old_size: int, new_size: int) -> None:
    """Rows [old_size, new_size) := mean of rows [0, old_size), input and untied output embeddings."""
    inp = model.get_input_embeddings().weight
    matrices = [inp]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != inp.data_ptr():
        matrices.append(out.weight)
    for weight in matrices:
        mean = weight[:old_size].float().mean(dim=0)
        weight[old_size:new_size] = mean.to(weight.dtype)
