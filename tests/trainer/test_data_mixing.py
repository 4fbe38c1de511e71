import numpy as np
import pytest

from cpt_trainer.contract.config import CurriculumPoint
from cpt_trainer.train.data_mixing import MixedSequenceStream, MixSource, alpha_at
from cpt_trainer.train.shards import TokenStream, read_manifest, write_corpus

L = 16


def _corpus(folder, low, high, docs=60, seed=0):
    """Documents whose ids all lie in [low, high): every token tells which corpus it came from."""
    rng = np.random.default_rng(seed)
    documents = [rng.integers(low, high, size=rng.integers(5, 40)).tolist() for _ in range(docs)]
    # EOS (id 2) is shared; give it to nobody when measuring.
    return TokenStream(read_manifest(write_corpus(folder, {"train": documents}, 1000, 2, shard_tokens=300)), "train")


@pytest.fixture
def streams(tmp_path):
    return {
        "law": _corpus(tmp_path / "law", 100, 200, seed=1),
        "tax": _corpus(tmp_path / "tax", 300, 400, seed=2),
        "web": _corpus(tmp_path / "web", 200, 300, seed=3),
    }


def _mix(streams, alpha, curriculum=()):
    sources = [
        MixSource("law", "domain", 3.0, streams["law"]),
        MixSource("tax", "domain", 1.0, streams["tax"]),
        MixSource("web", "replay", 1.0, streams["web"]),
    ]
    return MixedSequenceStream(sources, L, seed=11, alpha=alpha, curriculum=curriculum)


def _domain_token_fraction(tokens: np.ndarray) -> np.ndarray:
    """Per sequence: domain tokens / (domain + replay tokens), measured on the token ids themselves."""
    domain = ((tokens >= 100) & (tokens < 200)) | ((tokens >= 300) & (tokens < 400))
    replay = (tokens >= 200) & (tokens < 300)
    return domain.sum(axis=1), replay.sum(axis=1)


@pytest.mark.parametrize("alpha", [0.7, 0.5, 0.9, 0.33])
def test_measured_mix_is_within_one_percent_of_alpha_over_any_100_sequences(streams, alpha):
    mix = _mix(streams, alpha)
    tokens = np.concatenate([mix.read(mix.next_sequences(8, step)) for step in range(60)])  # 480 sequences
    assert tokens.shape == (480, L)
    domain, replay = _domain_token_fraction(tokens)
    # Each sequence is entirely from one corpus (its non-EOS tokens).
    assert np.all((domain == 0) | (replay == 0))
    is_domain = (domain > 0).astype(float)
    for start in range(0, len(tokens) - 100 + 1):
        window = is_domain[start : start + 100]
        assert abs(window.mean() - alpha) <= 0.01, (start, window.mean())


def test_domain_corpora_share_by_weight(streams):
    mix = _mix(streams, 0.8)
    tokens = mix.read(mix.next_sequences(400, 0))
    law = ((tokens >= 100) & (tokens < 200)).any(axis=1).sum()
    tax = ((tokens >= 300) & (tokens < 400)).any(axis=1).sum()
    assert law + tax == 320
    assert law == 240 and tax == 80  # weights 3:1, exactly


def test_curriculum_changes_alpha_by_step(streams):
    points = [CurriculumPoint(step=0, alpha=0.9), CurriculumPoint(step=10, alpha=0.5)]
    assert alpha_at(0, 0.7, points) == pytest.approx(0.9)
    assert alpha_at(5, 0.7, points) == pytest.approx(0.7)
    assert alpha_at(50, 0.7, points) == pytest.approx(0.5)
    mix = _mix(streams, 0.7, points)
    first = mix.read(mix.next_sequences(100, 0))
    [mix.next_sequences(100, s) for s in range(1, 10)]
    late = mix.read(mix.next_sequences(100, 20))
    assert (_domain_token_fraction(first)[0] > 0).mean() == pytest.approx(0.9, abs=0.01)
    assert (_domain_token_fraction(late)[0] > 0).mean() == pytest.approx(0.5, abs=0.01)


def test_resumed_stream_continues_with_the_same_sequences(streams):
    a = _mix(streams, 0.7)
    for step in range(37):  # past an epoch of some corpora
        a.next_sequences(8, step)
    b = _mix(streams, 0.7)
    b.load_state_dict(a.state_dict())
    for step in range(37, 60):
        plan_a, plan_b = a.next_sequences(8, step), b.next_sequences(8, step)
        assert plan_a == plan_b
        np.testing.assert_array_equal(a.read(plan_a), b.read(plan_b))


def test_every_chunk_is_seen_once_per_epoch(streams):
    mix = MixedSequenceStream([MixSource("web", "replay", 1.0, streams["web"])], L, seed=3, alpha=0.0)
    count = len(streams["web"]) // L
    plan = mix.next_sequences(count, 0)
    assert sorted(k for _, k in plan) == list(range(count))
