"""Fixtures of the control tier (defined in control_servers.py, a uniquely named module)."""

from control_servers import prometheus_factory, s3, s3_endpoint  # noqa: F401  (pytest fixtures)
