"""A multiple-choice cloze benchmark built from local text (no hub), in the trainer's
`multiple_choice` task schema.

Each item is a passage of general text cut before a word that is common in general text and
rare in the domain text; the right choice is that true next word, the distractors are words
common in the domain text and rare in general text. A model that knows general text picks the
true word well above chance (1 / choices); a model that forgot general text for the domain
drifts toward the distractors, so the accuracy measures exactly the forgetting the monitor
watches.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

_WORD = re.compile(r"[A-Za-z]+")


def _counts(docs: Sequence[str]) -> Counter:
    return Counter(w.lower() for d in docs for w in _WORD.findall(d))


def distinctive_words(docs: Sequence[str], other: Sequence[str], min_count: int = 20, limit: int = 40) -> list[str]:
    """Words of at least 4 letters frequent in `docs` and rarest in `other` (by ratio of shares)."""
    mine, theirs = _counts(docs), _counts(other)
    n_mine, n_theirs = max(1, sum(mine.values())), max(1, sum(theirs.values()))
    scored = [((c / n_mine) / ((theirs[w] + 1) / n_theirs), w) for w, c in mine.items() if c >= min_count and len(w) >= 4]
    return [w for _, w in sorted(scored, reverse=True)[:limit]]


def cloze_items(general: Sequence[str], domain: Sequence[str], count: int, choices: int = 4, context_words: int = 12,
                per_document: int = 3, seed: int = 0) -> list[dict]:
    """Up to `count` items `{question, choices, answer}` from `general` passages (deterministic for a seed)."""
    if choices < 2:
        raise ValueError("a multiple-choice item needs at least 2 choices")
    targets = set(distinctive_words(general, domain))
    distractors = distinctive_words(domain, general)
    if len(distractors) < choices - 1 or not targets:
        raise ValueError("the texts are too small or too alike to build cloze items")
    rng = random.Random(seed)
    items: list[dict] = []
    for doc in general:
        matches = list(_WORD.finditer(doc))
        taken, i = 0, context_words
        while i < len(matches) and taken < per_document:
            word = matches[i].group(0)
            if word.lower() not in targets or matches[i - 1].end() == matches[i].start():
                i += 1
                continue
            question = " ".join(doc[matches[i - context_words].start() : matches[i].start()].split())
            wrong = rng.sample([d for d in distractors if d != word.lower()], choices - 1)
            answer = rng.randrange(choices)
            options = wrong[:answer] + [word] + wrong[answer:]
            items.append({"question": question, "choices": options, "answer": answer})
            if len(items) >= count:
                return items
            taken, i = taken + 1, i + context_words  # items of one document do not overlap
    return items


def write_task_file(items: Sequence[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path
