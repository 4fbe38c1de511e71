import math

import pytest

from cpt_trainer.contract.config import OptimConfig
from cpt_trainer.train.lr_schedule import LRSchedule, lr_at, warmup_steps

PEAK, FLOOR, T = 3e-5, 3e-6, 1000


def test_cosine_warmup_end_middle_and_end_match_the_formula():
    optim = OptimConfig(learning_rate=PEAK, min_learning_rate=FLOOR, schedule="cosine", warmup_fraction=0.02)
    w = warmup_steps(optim, T)
    assert w == 20
    assert lr_at(w, optim, T) == pytest.approx(PEAK, rel=1e-12)
    assert lr_at(w // 2, optim, T) == pytest.approx(PEAK / 2, rel=1e-12)
    mid = w + (T - w) // 2
    assert lr_at(mid, optim, T) == pytest.approx((PEAK + FLOOR) / 2, rel=1e-12)
    quarter = w + (T - w) // 4
    expected = FLOOR + (PEAK - FLOOR) * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert lr_at(quarter, optim, T) == pytest.approx(expected, rel=1e-12)
    assert lr_at(T, optim, T) == pytest.approx(FLOOR, rel=1e-12)
    assert all(lr_at(n, optim, T) >= lr_at(n + 1, optim, T) for n in range(w, T))


def test_wsd_is_flat_then_decays_linearly_to_the_floor():
    optim = OptimConfig(learning_rate=PEAK, min_learning_rate=FLOOR, schedule="wsd", warmup_fraction=0.02, decay_fraction=0.1)
    assert lr_at(20, optim, T) == pytest.approx(PEAK)
    assert lr_at(900, optim, T) == pytest.approx(PEAK)
    assert lr_at(950, optim, T) == pytest.approx(PEAK - (PEAK - FLOOR) * 0.5)
    assert lr_at(T, optim, T) == pytest.approx(FLOOR)


def test_constant_after_warmup():
    optim = OptimConfig(learning_rate=PEAK, min_learning_rate=FLOOR, schedule="constant", warmup_fraction=0.05)
    assert lr_at(25, optim, T) == pytest.approx(PEAK / 2)
    assert lr_at(50, optim, T) == pytest.approx(PEAK)
    assert lr_at(T, optim, T) == pytest.approx(PEAK)


def test_schedule_state_resumes_at_the_same_update():
    optim = OptimConfig(learning_rate=PEAK, min_learning_rate=FLOOR)
    a = LRSchedule(optim, T)
    for _ in range(137):
        a.advance()
    b = LRSchedule(optim, T)
    b.load_state_dict(a.state_dict())
    assert b.next_lr() == a.next_lr() == lr_at(138, optim, T)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "constant"])
def test_a_one_update_run_with_warmup_trains_at_the_peak_not_the_floor(schedule):
    optim = OptimConfig(learning_rate=PEAK, min_learning_rate=FLOOR, schedule=schedule, warmup_fraction=0.1)
    assert warmup_steps(optim, 1) == 1
    assert lr_at(1, optim, 1) == pytest.approx(PEAK)
    # Two updates: warmup ends at the peak, the decays reach the floor on the last one.
    assert lr_at(1, optim, 2) == pytest.approx(PEAK)
    assert lr_at(2, optim, 2) == pytest.approx(PEAK if schedule == "constant" else FLOOR)
