"""Exact, seeded, resumable domain/replay mixing of packed fixed-length sequences.

Every corpus's train split is cut into consecutive `sequence_length`-token chunks (packing:
documents run across chunk boundaries, EOS between them) and read in a seeded permutation,
a fresh one per epoch. Sequence n of the run is a domain sequence exactly when
floor(A(n+1)) > floor(A(n)), A(n) being the sum of alpha over the sequences before n
(a Bresenham schedule): over any window of W sequences at a fixed alpha the domain count is
floor or ceil of alpha*W, so 100 sequences are within 1 % of alpha. Within a role, corpora
take turns by smooth weighted round-robin on their weights. All of it is counters, so the
data position is a small dict saved in every checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cpt_trainer.contract.config import CurriculumPoint
from cpt_trainer.train.shards import TokenStream


@dataclass
class MixSource:
    """One corpus's train stream with its role and weight."""

    name: str
    role: str  # "domain" | "replay"
    weight: float
    stream: TokenStream


def alpha_at(step: int, alpha: float, curriculum: Sequence[CurriculumPoint]) -> float:
    """Domain fraction at an optimizer step: the curriculum linearly interpolated, flat outside it."""
    if not curriculum:
        return alpha
    points = sorted(curriculum, key=lambda p: p.step)
    if step <= points[0].step:
        return points[0].alpha
    for left, right in zip(points, points[1:]):
        if step <= right.step:
            span = right.step - left.step
            return right.alpha if span == 0 else left.alpha + (right.alpha - left.alpha) * (step - left.step) / span
    return points[-1].alpha


class PackedChunks:
    """Chunk order of one corpus: a seeded permutation per epoch, read by position."""

    def __init__(self, stream: TokenStream, sequence_length: int, seed: int, corpus_index: int):
        self.stream = stream
        self.sequence_length = sequence_length
        self.count = len(stream) // sequence_length
        self._seed = (seed, corpus_index)
        self._epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def chunk_at(self, position: int) -> int:
        epoch, offset = divmod(position, self.count)
        if epoch != self._epoch:
            self._order = np.random.default_rng([*self._seed, epoch]).permutation(self.count)
            self._epoch = epoch
        return int(self._order[offset])

    def read(self, chunk: int) -> np.ndarray:
        return self.stream.read(chunk * self.sequence_length, self.sequence_length)


class MixedSequenceStream:
    """Decides, sequence by sequence, which corpus and chunk comes next; `state_dict` resumes it."""

    def __init__(
        self,
        sources: Sequence[MixSource],
        sequence_length: int,
        seed: int,
        alpha: float,
        curriculum: Sequence[CurriculumPoint] = (),
    ):
        self.sources = list(sources)
        self.chunks = [PackedChunks(s.stream, sequence_length, seed, i) for i, s in enumerate(self.sources)]
        for src, chunks in zip(self.sources, self.chunks):
            if chunks.count == 0:
                raise ValueError(
                    f"corpus {src.name} has {len(src.stream)} train tokens, fewer than one sequence of {sequence_length}"
                )
        self.alpha = alpha
        self.curriculum = list(curriculum)
        self._roles = {role: [i for i, s in enumerate(self.sources) if s.role == role] for role in ("domain", "replay")}
        # State (all of it): sequences issued, domain sequences issued, alpha summed so far,
        # round-robin credit per corpus, sequences drawn per corpus.
        self.sequences = 0
        self.domain_sequences = 0
        self.alpha_sum = 0.0
        self.credit = [0.0] * len(self.sources)
        self.drawn = [0] * len(self.sources)

    def _pick_role(self, alpha: float) -> str:
        if not self._roles["replay"]:
            return "domain"
        if not self._roles["domain"]:
            return "replay"
        self.alpha_sum += alpha
        # The epsilon absorbs float error in the running sum (e.g. 0.7 * 10 = 6.999999...).
        if math.floor(self.alpha_sum + 1e-9) > self.domain_sequences:
            self.domain_sequences += 1
            return "domain"
        return "replay"

    def _pick_corpus(self, role: str) -> int:
        members = self._roles[role]
        total = sum(self.sources[i].weight for i in members)
        for i in members:
            self.credit[i] += self.sources[i].weight
        best = max(members, key=lambda i: (self.credit[i], -i))
        self.credit[best] -= total
        return best

    def next_sequences(self, count: int, step: int) -> list[tuple[int, int]]:
        """The next `count` sequences as (corpus index, chunk index), all drawn at optimizer `step`."""
        alpha = alpha_at(step, self.alpha, self.curriculum)
        plan = []
        for _ in range(count):
            corpus = self._pick_corpus(self._pick_role(alpha))
            plan.append((corpus, self.chunks[corpus].chunk_at(self.drawn[corpus])))
            self.drawn[corpus] += 1
            self.sequences += 1
        return plan

    def read(self, plan: Sequence[tuple[int, int]]) -> np.ndarray:
        """The token ids of planned sequences, shape (len(plan), sequence_length)."""
        return np.stack([self.chunks[c].read(k) for c, k in plan])

    def state_dict(self) -> dict:
        return {
            "sequences": self.sequences,
            "domain_sequences": self.domain_sequences,
            "alpha_sum": self.alpha_sum,
            "credit": list(self.credit),
            "drawn": {s.name: n for s, n in zip(self.sources, self.drawn)},
        }

    def load_state_dict(self, state: dict) -> None:
        names = [s.name for s in self.sources]
        if sorted(state["drawn"]) != sorted(names):
            raise ValueError(f"data position names corpora {sorted(state['drawn'])}, this run has {sorted(names)}")
        self.sequences = int(state["sequences"])
        self.domain_sequences = int(state["domain_sequences"])
        self.alpha_sum = float(state["alpha_sum"])
        self.credit = [float(c) for c in state["credit"]]
        self.drawn = [int(state["drawn"][n]) for n in names]
