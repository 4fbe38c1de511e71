"""The trainer's input errors: one clear line, exit code 2 (a `ConfigError` for the CLI)."""

from __future__ import annotations

from cpt_trainer.contract.config import ConfigError


class TrainerInputError(ConfigError):
    """Bad input found before (or instead of) spending accelerator time: a missing model
    path, shards that do not match the tokenizer, a model that cannot fit, ..."""
