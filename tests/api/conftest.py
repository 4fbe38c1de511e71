"""Fixtures of the API tier (helpers live in api_helpers.py, a uniquely named module)."""

from api_helpers import crds, legal  # noqa: F401  (pytest fixtures)
