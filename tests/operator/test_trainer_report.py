"""Reading the trainer's termination message (pure): only a well-formed EvaluationUnavailable
report counts, bounded, whatever else a tenant's pod writes there."""

import json

from cpt_operator.decide.trainer_report import MESSAGE_LIMIT, evaluation_unavailable, unavailable_from_pods


def test_a_report_names_the_eval_and_its_message():
    text = json.dumps({"reason": "EvaluationUnavailable", "eval": "cloze", "message": "eval.general cloze: task file\nnot found"})
    assert evaluation_unavailable(text) == ("cloze", "eval.general cloze: task file not found")


def test_anything_else_is_no_report():
    for text in (None, "", "Traceback (most recent call last):", "[1, 2]", json.dumps({"reason": "Other", "eval": "x", "message": "m"}),
                 json.dumps({"reason": "EvaluationUnavailable", "eval": 3, "message": "m"})):  # fmt: skip
        assert evaluation_unavailable(text) is None, text


def test_the_message_is_bounded():
    name, message = evaluation_unavailable(json.dumps({"reason": "EvaluationUnavailable", "eval": "e" * 500, "message": "m" * 100_000}))
    assert len(name) == 63 and len(message) == MESSAGE_LIMIT


def test_found_among_the_pods_terminated_containers():
    report = json.dumps({"reason": "EvaluationUnavailable", "eval": "cloze", "message": "missing"})
    pods = [{"status": {"containerStatuses": [{"state": {"running": {}}}]}},
            {"status": {"containerStatuses": [{"state": {"waiting": {}}, "lastState": {"terminated": {"message": report}}}]}}]  # fmt: skip
    assert unavailable_from_pods(pods) == ("cloze", "missing")
    assert unavailable_from_pods([]) is None
