"""The progress line says tokens seen and an ETA."""

import logging

import pytest

from cpt_trainer.contract.config import TrainerConfig, load_config
from cpt_trainer.train.main import prepare
from cpt_trainer.train.trainer import format_eta


@pytest.mark.parametrize(("seconds", "text"), [(None, "?"), (0.4, "0s"), (42, "42s"), (185, "3m05s"), (3725, "1h02m")])
def test_eta_format(seconds, text):
    assert format_eta(seconds) == text


def test_progress_lines_report_tokens_seen_and_an_eta_that_reaches_zero(make_config, caplog):
    run = prepare(load_config(make_config(), TrainerConfig))
    try:
        with caplog.at_level(logging.INFO, logger="cpt_trainer.train.trainer"):
            assert run.trainer.train() == "completed"
    finally:
        run.close()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    per_step = run.trainer.tokens_per_step
    assert lines[0].startswith("step 1/6") and f"tokens seen {per_step} " in lines[0] and " eta " in lines[0]
    assert lines[-1].startswith("step 6/6") and f"tokens seen {6 * per_step} " in lines[-1]
    assert lines[-1].endswith("eta 0s")
