"""Fixtures of the control tier (defined in tests/support/loopback_servers.py)."""

from loopback_servers import prometheus_factory, s3, s3_endpoint  # noqa: F401  (pytest fixtures)
