"""Each rank's RNG states in a checkpoint (`rng/rank-00000.pt`), stored as plain data.

The file loads with `torch.load(weights_only=True)`, so a crafted checkpoint cannot run code:
Python's state is its tuple of ints, NumPy's MT19937 key a list of ints (not an ndarray, whose
pickle needs NumPy's reconstructors), torch's CPU and CUDA states ByteTensors.

A file that does not load that way (one written before this format, whose NumPy state is an
ndarray, or anything else) is not restored: training continues with the RNG as seeded at start,
logged as a warning. The data order does not depend on it (the mixer's counters and seeds are in
`data_position.json`), only draws such as dropout masks.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

RNG_FORMAT = 2  # 1: the unversioned dict with NumPy's ndarray, which loaded only with full pickle


def rng_state() -> dict:
    """This process's Python, NumPy, torch (and CUDA) RNG states as plain data."""
    kind, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "format": RNG_FORMAT,
        "python": random.getstate(),
        "numpy": {"kind": str(kind), "key": [int(k) for k in key], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Apply a `rng_state()`; on any error nothing is changed (the states before are put back)."""
    before = rng_state()
    try:
        _apply(state)
    except Exception:
        _apply(before)
        raise


def _apply(state: dict) -> None:
    if not isinstance(state, dict) or state.get("format") != RNG_FORMAT:
        raise ValueError(f"not an RNG state of format {RNG_FORMAT}")
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng_state(path: Path) -> None:
    torch.save(rng_state(), path)


def restore_rng_state(path: Path) -> bool:
    """Load `path` as plain data and apply it; False (and a warning) when it cannot be."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle.UnpicklingError for a refused global, RuntimeError for a bad zip...
        logger.warning("RNG state %s not restored, training continues with fresh RNG: it does not load as plain data "
                       "(weights_only)%s", path, _needs(path) or f": {_first_line(exc)}")
        return False
    try:
        set_rng_state(state)
    except Exception as exc:  # noqa: BLE001 - a malformed state: KeyError, TypeError, ValueError, RuntimeError
        logger.warning("RNG state %s not restored, training continues with fresh RNG: %s", path, _first_line(exc))
        return False
    return True


def _needs(path: Path) -> str:
    """Which globals the file would need (read from the pickle's opcodes, nothing is run), if it says."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - a file that is not a torch zip says nothing more
        return ""
    if not names:
        return ""
    legacy = " (written by an older trainer: NumPy's state as an ndarray)" if all(n.startswith("numpy") for n in names) else ""
    return f": it needs {', '.join(sorted(names))}{legacy}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
