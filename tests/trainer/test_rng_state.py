"""Checkpoint RNG files: restored exactly, loaded as plain data only (a crafted pickle never runs)."""

import logging
import random

import numpy as np
import torch

from cpt_trainer.contract.config import TrainerConfig, load_config
from cpt_trainer.train.main import prepare
from cpt_trainer.train.rng_state import restore_rng_state, save_rng_state


def _draws() -> list:
    return [random.random(), random.getrandbits(64), *np.random.rand(3).tolist(), *np.random.randn(3).tolist(),
            *torch.rand(3).tolist(), *torch.randn(3).tolist()]


def _scramble() -> None:
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)


class _WritesMarker:
    """Unpickled with full pickle, this runs `exec`, which writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle ran')",))


def _plant_payload(path, marker) -> None:
    torch.save({"format": 2, "python": _WritesMarker(marker), "torch": torch.get_rng_state()}, path)


def _write_old_format(path) -> None:
    """The file as the trainer wrote it before: NumPy's state with its ndarray."""
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}, path)


def test_rng_file_is_plain_data_and_restores_every_generator_exactly(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state: it must round-trip too
    path = tmp_path / "rank-00000.pt"
    save_rng_state(path)
    uninterrupted = _draws()
    torch.load(path, weights_only=True)  # loads without full pickle
    _scramble()
    assert restore_rng_state(path)
    assert _draws() == uninterrupted


def test_rng_file_with_code_in_its_pickle_is_not_run(tmp_path, caplog):
    live, live_marker = tmp_path / "live.pt", tmp_path / "live-marker"
    _plant_payload(live, live_marker)
    torch.load(live, weights_only=False)  # the payload is real: full pickle runs it
    assert live_marker.read_text() == "pickle ran"

    path, marker = tmp_path / "rank-00000.pt", tmp_path / "marker"
    _plant_payload(path, marker)
    torch.manual_seed(5)
    expected = torch.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="cpt_trainer.train.rng_state"):
        assert restore_rng_state(path) is False
    assert not marker.exists()
    assert torch.equal(torch.get_rng_state(), expected)  # nothing applied
    assert f"RNG state {path} not restored, training continues with fresh RNG" in caplog.text
    assert "builtins.exec" in caplog.text


def test_rng_file_of_the_old_format_is_not_unpickled_and_says_so(tmp_path, caplog):
    path = tmp_path / "rank-00000.pt"
    _write_old_format(path)
    with caplog.at_level(logging.WARNING, logger="cpt_trainer.train.rng_state"):
        assert restore_rng_state(path) is False
    assert "not restored, training continues with fresh RNG" in caplog.text
    assert "written by an older trainer" in caplog.text


def test_malformed_plain_rng_state_changes_nothing(tmp_path, caplog):
    path = tmp_path / "rank-00000.pt"
    save_rng_state(path)
    state = torch.load(path, weights_only=True)
    state["numpy"]["key"] = [1, 2, 3]  # Python's state would apply, NumPy's then fails
    torch.save(state, path)
    _scramble()
    before = _draws()
    _scramble()
    with caplog.at_level(logging.WARNING, logger="cpt_trainer.train.rng_state"):
        assert restore_rng_state(path) is False
    assert _draws() == before
    assert "not restored" in caplog.text


def _stop_at(step: int, trainer):
    return lambda: trainer.step >= step


def test_resume_continues_the_rng_draws_of_the_stopped_run(make_config, tmp_path):
    path = make_config(checkpoint={"interval": 3, "uri": str(tmp_path / "checkpoints")})
    run = prepare(load_config(path, TrainerConfig))
    try:
        assert run.trainer.train(stop_requested=_stop_at(3, run.trainer)) == "stopped"
        uninterrupted = _draws()  # what the run would have drawn next
    finally:
        run.close()
    _scramble()
    run = prepare(load_config(path, TrainerConfig))
    try:
        assert run.trainer.step == 3
        assert _draws() == uninterrupted
    finally:
        run.close()


def test_resume_from_a_checkpoint_with_a_crafted_or_old_rng_file_warns_and_runs_nothing(make_config, tmp_path, caplog):
    ck = tmp_path / "checkpoints"
    path = make_config(checkpoint={"interval": 3, "uri": str(ck)})
    run = prepare(load_config(path, TrainerConfig))
    try:
        assert run.trainer.train(stop_requested=_stop_at(3, run.trainer)) == "stopped"
    finally:
        run.close()
    rng_file = ck / "step-00000003" / "rng" / "rank-00000.pt"
    marker = tmp_path / "marker"
    for plant in (lambda: _plant_payload(rng_file, marker), lambda: _write_old_format(rng_file)):
        plant()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="cpt_trainer.train.rng_state"):
            run = prepare(load_config(path, TrainerConfig))
        try:
            assert run.trainer.step == 3  # everything else resumed
            assert run.trainer.last_checkpoint == "step-00000003"
        finally:
            run.close()
        assert not marker.exists()
        assert f"RNG state {rng_file} not restored, training continues with fresh RNG" in caplog.text
