"""The forgetting decision: patience, never on one noisy point, never on missing data."""

from cpt_operator.decide.forgetting import EvalPoint, decide_forgetting


def points(*values):
    return [EvalPoint(step * 100, v) for step, v in enumerate(values)]


def test_halts_only_after_patience_consecutive_evaluations_over_the_threshold():
    assert not decide_forgetting(points(0.0, 0.05, 0.06), 0.03, 3).exceeded
    decision = decide_forgetting(points(0.0, 0.05, 0.06, 0.07), 0.03, 3)
    assert decision.exceeded and decision.streak == 3 and decision.step == 300 and decision.regression == 0.07
    assert "7.00% exceeds the 3.0% threshold for 3 consecutive" in decision.message(0.03, 3)


def test_one_noisy_point_resets_nothing_but_does_not_trigger():
    assert not decide_forgetting(points(0.0, 0.01, 0.2, 0.01), 0.03, 2).exceeded
    assert not decide_forgetting(points(0.0, 0.2, 0.01, 0.2), 0.03, 2).exceeded


def test_missing_evaluations_neither_count_nor_reset():
    assert not decide_forgetting(points(0.0, None, None, None), 0.03, 1).exceeded
    assert decide_forgetting(points(0.0, 0.05, None, 0.05), 0.03, 2).exceeded


def test_the_baseline_never_counts():
    assert not decide_forgetting([EvalPoint(0, 0.5)], 0.03, 1).exceeded


def test_exactly_at_the_threshold_is_not_forgetting():
    assert not decide_forgetting(points(0.0, 0.03, 0.03), 0.03, 1).exceeded
