"""Vocabulary extension for a domain: add tokens, resize embeddings, initialise the new rows.

A word is added the way it appears in running text: for a byte-level BPE, " word" becomes
the model token "Ġword", with the merges that build it from its current pieces appended
after the existing merges (lowest priority). The BPE model itself then produces the token,
so encode/decode round-trips stay exact; an `AddedToken` would be matched before
pre-tokenization and break the byte-level space convention. Pieces that the merge chain
needs and the vocabulary lacks are added too (as few as the word's split allows).

Each new row of the input embedding and (when untied) of the output embedding is the mean
of the rows of the pieces the word was split into before (DESIGN section 1: never random);
with tied embeddings the one shared matrix is set once. Token counts and chars/token on
domain text are reported before and after; an extension that does not reduce the token
count is logged as a WARNING and carried in the report's `warning`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ExtensionReport:
    added: list[str]
    old_vocab_size: int
    new_vocab_size: int
    chars_per_token_before: float
    chars_per_token_after: float
    sample_chars: int = 0
    tokens_before: int = 0
    tokens_after: int = 0
    pieces_added: list[str] = field(default_factory=list)  # intermediate merge results added to the vocabulary
    warning: str | None = None

    @property
    def token_reduction(self) -> float:
        """Fraction of sample tokens saved (0.1: 10 % fewer tokens); negative when it got worse."""
        return 1.0 - self.tokens_after / self.tokens_before if self.tokens_before else 0.0

    def to_dict(self) -> dict:
        return {
            "added": list(self.added), "old_vocab_size": self.old_vocab_size, "new_vocab_size": self.new_vocab_size,
            "pieces_added": len(self.pieces_added),
            "sample_chars": self.sample_chars, "tokens_before": self.tokens_before, "tokens_after": self.tokens_after,
            "token_reduction": round(self.token_reduction, 6),
            "chars_per_token_before": self.chars_per_token_before, "chars_per_token_after": self.chars_per_token_after,
            "warning": self.warning,
        }  # fmt: skip


def count_tokens(tokenizer, texts: Sequence[str]) -> int:
    """Tokens of `texts`, no special tokens."""
    return sum(len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]) if texts else 0


def chars_per_token(tokenizer, texts: Sequence[str]) -> float:
    """Characters per token over `texts` (higher: the tokenizer fits the text better)."""
    tokens = count_tokens(tokenizer, texts)
    return sum(len(t) for t in texts) / tokens if tokens else 0.0


def in_context_pieces(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Token ids of each word as it appears mid-text: after a space (" word")."""
    return tokenizer([" " + w for w in words], add_special_tokens=False)["input_ids"] if words else []


def extend_vocabulary(model, tokenizer, tokens: Sequence[str], sample_texts: Sequence[str] = ()) -> ExtensionReport:
    """Add `tokens` to `tokenizer` (in place) as they appear in running text; grow `model`'s embeddings.

    Words already one token after a space are skipped. `sample_texts` (domain eval text)
    measure token count and chars/token before and after."""
    chars = sum(len(t) for t in sample_texts)
    tokens_before = count_tokens(tokenizer, sample_texts)
    old_size = len(tokenizer)
    wanted = list(dict.fromkeys(t.strip() for t in tokens if t and t.strip()))
    old_pieces = dict(zip(wanted, in_context_pieces(tokenizer, wanted)))
    new = [w for w in wanted if len(old_pieces[w]) > 1]
    pieces_added: list[str] = []
    sources: dict[int, list[int]] = {}  # new id -> the old ids it replaces
    if new:
        if _is_bpe(tokenizer):
            new, pieces_added, sources = _add_bpe_words(tokenizer, {w: old_pieces[w] for w in new})
        else:  # not a BPE model: added tokens, matched as written (a space before them is its own token)
            logger.warning("tokenizer model is not BPE: domain tokens are added as AddedTokens, not in-context")
            tokenizer.add_tokens(new)
            sources = {tokenizer.convert_tokens_to_ids(w): old_pieces[w] for w in new}
    new_size = len(tokenizer)
    if new_size > old_size:
        if new_size > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(new_size, mean_resizing=False)
        _fill_new_rows(model, old_size, new_size, sources)
    tokens_after = count_tokens(tokenizer, sample_texts)
    before = chars / tokens_before if tokens_before else 0.0
    after = chars / tokens_after if tokens_after else 0.0
    warning = None
    if sample_texts and new and tokens_after >= tokens_before:
        warning = (f"tokenizer extension did not reduce the domain token count: {tokens_before} -> {tokens_after} "
                   f"tokens on {len(sample_texts)} eval documents with {len(new)} added words")
        logger.warning("%s", warning)
    report = ExtensionReport(new, old_size, new_size, before, after, chars, tokens_before, tokens_after, pieces_added, warning)
    logger.info(
        "tokenizer extension: %d words added (%d -> %d entries), domain tokens %d -> %d (%.2f%% fewer), chars/token %.4f -> %.4f",
        len(new), old_size, new_size, tokens_before, tokens_after, 100 * report.token_reduction, before, after,
    )
    return report


def _is_bpe(tokenizer) -> bool:
    from tokenizers.models import BPE

    backend = getattr(tokenizer, "_tokenizer", None)
    return backend is not None and isinstance(backend.model, BPE)


def _model_form(backend, word: str) -> str | None:
    """The vocabulary string of " word" as the normalizer and pre-tokenizer make it ("Ġword"); None when split."""
    text = " " + word
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return text
    parts = backend.pre_tokenizer.pre_tokenize_str(text)
    return parts[0][0] if len(parts) == 1 else None


def _add_bpe_words(tokenizer, words: dict[str, list[int]]) -> tuple[list[str], list[str], dict[int, list[int]]]:
    """Put each word's in-context form into the BPE vocabulary with the merges that build it from
    its current pieces (`words`: word -> old ids of " word"). Returns (words added, intermediate
    pieces added, new id -> old ids it spans)."""
    from tokenizers import Tokenizer

    backend = tokenizer._tokenizer
    state = json.loads(backend.to_str())
    model = state["model"]
    vocab: dict[str, int] = model["vocab"]
    merges = model["merges"]
    pairs_as_lists = bool(merges) and isinstance(merges[0], list)
    known = {tuple(m) if pairs_as_lists else tuple(m.split(" ", 1)) for m in merges}
    next_id = max([*vocab.values(), *(t["id"] for t in state.get("added_tokens", []))], default=-1) + 1
    added, pieces_added, sources = [], [], {}
    for word, old_ids in words.items():
        form = _model_form(backend, word)
        leaves = backend.encode(" " + word, add_special_tokens=False).tokens
        if form is None or form in vocab or "".join(leaves) != form or len(leaves) < 2:
            logger.warning("tokenizer extension: %r cannot be one in-context token, skipped", word)
            continue
        for a, b, merged, (i, j) in _merge_tree(leaves, vocab):
            if (a, b) in known:  # an existing merge that did not fire here: a later one would not either
                continue
            if merged not in vocab:
                vocab[merged] = next_id
                sources[next_id] = old_ids[i:j]
                next_id += 1
                if merged != form:
                    pieces_added.append(merged)
            merges.append([a, b] if pairs_as_lists else f"{a} {b}")
            known.add((a, b))
        added.append(word)
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))
    # A chain cut short by an existing merge leaves the word in pieces: report only words that made it.
    added = [w for w, ids in zip(added, in_context_pieces(tokenizer, added)) if len(ids) == 1]
    return added, pieces_added, sources


def _merge_tree(leaves: list[str], vocab: dict[str, int]) -> list[tuple[str, str, str, tuple[int, int]]]:
    """Merges (a, b, a+b), bottom-up, that join `leaves` into one token, needing the fewest
    intermediates not already in `vocab` (interval dynamic programme over the pieces)."""
    n = len(leaves)
    cost: dict[tuple[int, int], tuple[int, int]] = {}  # (i, j) -> (new entries, split point)

    def best(i: int, j: int) -> int:
        if j - i == 1:
            return 0
        if (i, j) not in cost:
            own = 0 if "".join(leaves[i:j]) in vocab else 1
            cost[(i, j)] = min(((best(i, k) + best(k, j) + own, k) for k in range(i + 1, j)))
        return cost[(i, j)][0]

    best(0, n)
    out: list[tuple[str, str, str, tuple[int, int]]] = []

    def emit(i: int, j: int) -> None:
        if j - i == 1:
            return
        k = cost[(i, j)][1]
        emit(i, k)
        emit(k, j)
        out.append(("".join(leaves[i:k]), "".join(leaves[k:j]), "".join(leaves[i:j]), (i, j)))

    emit(0, n)
    return out


@torch.no_grad()
def _fill_new_rows(model, old_size: int, new_size: int, sources: dict[int, list[int]]) -> None:
    """Row r in [old_size, new_size) := mean of the old rows `sources[r]` (the pieces it replaces),
    or of all old rows when unknown; input and, when untied, output embeddings."""
    inp = model.get_input_embeddings().weight
    matrices = [inp]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != inp.data_ptr():
        matrices.append(out.weight)
    for weight in matrices:
        mean = weight[:old_size].float().mean(dim=0)
        for row in range(old_size, new_size):
            ids = [i for i in sources.get(row, []) if i < old_size]
            weight[row] = (weight[ids].float().mean(dim=0) if ids else mean).to(weight.dtype)
