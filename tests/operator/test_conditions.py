from cpt_operator import conditions as c


def test_set_condition_appends_new_condition_with_generation():
    out = c.set_condition([], c.ACCEPTED, True, c.SPEC_ACCEPTED, "ok", 3, "2024-01-01T00:00:00Z")
    assert out == [{"type": "Accepted", "status": "True", "reason": "SpecAccepted", "message": "ok",
                    "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 3}]  # fmt: skip


def test_transition_time_moves_only_on_flip():
    first = c.set_condition([], c.RUNNING, "False", c.JOB_NOT_RUNNING, "a", 1, "T1")
    same = c.set_condition(first, c.RUNNING, "False", c.JOB_RESTARTING, "b", 2, "T2")
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["reason"] == c.JOB_RESTARTING and same[0]["observedGeneration"] == 2
    flipped = c.set_condition(same, c.RUNNING, "True", c.JOB_RUNNING, "c", 2, "T3")
    assert flipped[0]["lastTransitionTime"] == "T3"


def test_unchanged_condition_gives_equal_list_and_input_is_not_modified():
    first = c.set_condition([], c.READY, False, c.CURATING, "x", 1, "T1")
    again = c.set_condition(first, c.READY, False, c.CURATING, "x", 1, "T9")
    assert again == first and again is not first


def test_other_conditions_keep_their_order():
    conds = c.set_condition([], c.ACCEPTED, True, "A", "", 1, "T")
    conds = c.set_condition(conds, c.CREATED, True, "B", "", 1, "T")
    conds = c.set_condition(conds, c.ACCEPTED, False, "C", "", 1, "T")
    assert [x["type"] for x in conds] == [c.ACCEPTED, c.CREATED]


def test_invalid_status_rejected():
    import pytest

    with pytest.raises(ValueError):
        c.set_condition([], c.READY, "yes", "R", "", 1, "T")


def test_event_message_truncated():
    long = "x" * 5000
    out = c.truncate_message(long)
    assert len(out) == c.EVENT_MESSAGE_LIMIT and out.endswith("...")
    assert c.truncate_message("short") == "short"


def test_rfc3339_format():
    import datetime

    t = datetime.datetime(2024, 5, 6, 7, 8, 9, 123, tzinfo=datetime.timezone.utc)
    assert c.now_rfc3339(t) == "2024-05-06T07:08:09Z"
