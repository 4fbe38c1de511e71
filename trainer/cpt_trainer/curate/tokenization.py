"""The corpus tokenizer (a `tokenizer.json` through the `tokenizers` library, no transformers
import) and the tokenizer analysis: chars/token, fertility, the most fragmented frequent
words and a proposed vocabulary extension."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from cpt_trainer.contract.config import TokenizerAnalysisConfig
from cpt_trainer.curate.errors import CurationInputError

_EOS_FALLBACKS = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "<|im_end|>")


def _special_token(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("content")
    return None


class CorpusTokenizer:
    """Tokenizes documents without special tokens; each document ends with `eos_id` in a shard."""

    def __init__(self, local_path: str, name_or_path: str, eos_token: str | None = None):
        from tokenizers import Tokenizer

        path = Path(local_path)
        file = path if path.is_file() else path / "tokenizer.json"
        if not file.is_file():
            raise CurationInputError(f"tokenizer {name_or_path}: no tokenizer.json found")
        data = file.read_bytes()
        try:
            self._tok = Tokenizer.from_str(data.decode("utf-8"))
        except Exception as exc:
            raise CurationInputError(f"tokenizer {name_or_path}: cannot load tokenizer.json: {exc}") from None
        self.name_or_path = name_or_path
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        if eos_token is None:
            for meta in ("tokenizer_config.json", "special_tokens_map.json"):
                meta_file = file.parent / meta
                if meta_file.is_file():
                    try:
                        eos_token = _special_token(json.loads(meta_file.read_text(encoding="utf-8")).get("eos_token"))
                    except (json.JSONDecodeError, AttributeError):
                        eos_token = None
                    if eos_token:
                        break
        if eos_token is None:
            eos_token = next((t for t in _EOS_FALLBACKS if self._tok.token_to_id(t) is not None), None)
        if eos_token is None:
            raise CurationInputError(f"tokenizer {name_or_path}: no end-of-document token found; set eos_token")
        eos_id = self._tok.token_to_id(eos_token)
        if eos_id is None:
            raise CurationInputError(f"tokenizer {name_or_path}: eos_token {eos_token!r} is not in the vocabulary")
        self.eos_token = eos_token
        self.eos_id = int(eos_id)

    @property
    def dtype(self) -> str:
        return "uint16" if self.vocab_size <= 65535 else "uint32"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def identity(self) -> dict:
        return {"name_or_path": self.name_or_path, "vocab_size": self.vocab_size, "sha256": self.sha256,
                "eos_token": self.eos_token}  # fmt: skip


_WORD = re.compile(r"[^\W\d_]{4,}")  # candidate words for the extension: letters only, 4+


class TokenizerSample:
    """Counts over the sampled documents of one worker; mergeable across workers."""

    def __init__(self, fraction: float):
        self.threshold = int(fraction * (1 << 64)) if fraction < 1.0 else 1 << 64
        self.documents = 0
        self.chars = 0
        self.tokens = 0
        self.words = 0
        self.word_counts: Counter = Counter()

    def selects(self, content_hash: int) -> bool:
        """Deterministic sample by content hash: the same documents at any parallelism."""
        return content_hash < self.threshold

    def add(self, text: str, n_tokens: int) -> None:
        self.documents += 1
        self.chars += len(text)
        self.tokens += n_tokens
        self.words += len(text.split())
        self.word_counts.update(_WORD.findall(text))

    def to_dict(self) -> dict:
        return {"documents": self.documents, "chars": self.chars, "tokens": self.tokens, "words": self.words,
                "word_counts": dict(self.word_counts)}  # fmt: skip

    @staticmethod
    def merged(parts: list[dict]) -> dict:
        total = {"documents": 0, "chars": 0, "tokens": 0, "words": 0}
        counts: Counter = Counter()
        for p in parts:
            for k in total:
                total[k] += p.get(k, 0)
            counts.update(p.get("word_counts", {}))
        total["word_counts"] = counts
        return total


def analyse(sample: dict, tokenizer: CorpusTokenizer, cfg: TokenizerAnalysisConfig) -> dict:
    """The manifest's `tokenizer_analysis` from merged sample counts."""
    tokens, words, chars = sample["tokens"], sample["words"], sample["chars"]
    counts: Counter = sample["word_counts"]
    result = {
        "sample_documents": sample["documents"],
        "sample_chars": chars,
        "sample_tokens": tokens,
        "chars_per_token": round(chars / tokens, 4) if tokens else None,
        "fertility": round(tokens / words, 4) if words else None,
        "fragmented_words": [],
        "fragmented_fraction": None,
        "proposed_extension": [],
    }
    if not counts:
        return result
    vocab = sorted(counts)
    # A word inside running text: with a leading space, as BPE and SentencePiece see it.
    pieces = np.array([len(ids) for ids in tokenizer.encode_batch([" " + w for w in vocab])])
    freq = np.array([counts[w] for w in vocab])
    fragmented = pieces >= cfg.min_pieces
    result["fragmented_fraction"] = round(float(freq[fragmented].sum() / freq.sum()), 4)
    frequent = fragmented & (freq >= cfg.min_frequency)
    saved = freq * (pieces - 1)  # tokens saved in the sample if the word were one token
    order = sorted(np.flatnonzero(frequent).tolist(), key=lambda i: (-int(saved[i]), vocab[i]))
    result["fragmented_words"] = [
        {"word": vocab[i], "count": int(freq[i]), "pieces": int(pieces[i])} for i in order[:50]
    ]
    result["proposed_extension"] = [vocab[i] for i in order[: cfg.extension_size]]
    return result
