"""Errors of the curation job that a tenant can fix (exit code 2, one clear line)."""

from __future__ import annotations


class CurationInputError(ValueError):
    """Bad input or settings discovered while curating: no files, no documents, no tokenizer."""
