"""Per-document text stages that need no model: Unicode clean-up and the script filter."""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Control characters except tab and newline, zero-width characters and the BOM.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
# Unicode spaces (no-break, en/em, ideographic...) that are not ASCII blanks.
_ODD_SPACES = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING = re.compile(r"[ \t]+\n")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def clean_text(text: str, form: str) -> str:
    """Normalise to `form`, unify line ends and odd spaces, drop control characters,
    right-strip lines and keep at most one empty line in a row. Indentation and runs of
    spaces inside a line are kept: code and tables depend on them."""
    text = unicodedata.normalize(form, text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = _ODD_SPACES.sub(" ", text)
    text = _TRAILING.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    if not name:
        return ""
    first = name.split(" ", 1)[0]
    return "han" if first == "CJK" else first.lower()


class ScriptFilter:
    """Keep a document when at least `min_fraction` of its letters are in the given scripts
    (Unicode character names: Latin, Cyrillic, Greek, Han, Arabic, ...). At most the first
    `max_chars` characters are looked at."""

    def __init__(self, scripts: list[str], min_fraction: float, max_chars: int = 20_000):
        self.scripts = {s.lower() for s in scripts}
        self.min_fraction = min_fraction
        self.max_chars = max_chars

    def fraction(self, text: str) -> float:
        letters = 0
        inside = 0
        for ch in text[: self.max_chars]:
            if ch.isalpha():
                letters += 1
                if _script(ch) in self.scripts:
                    inside += 1
        return inside / letters if letters else 0.0

    def keep(self, text: str) -> bool:
        return self.fraction(text) >= self.min_fraction
