"""What the real-cluster tests share (imported by name; fixtures live in conftest.py)."""

from __future__ import annotations

import time

import pytest
from kubernetes.client.rest import ApiException


def eventually(check, timeout: float = 90, interval: float = 0.5, what: str = "condition"):
    """check() until it returns a truthy value; fail with its last value or error."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except ApiException as e:
            last = e
        time.sleep(interval)
    pytest.fail(f"{what} not reached in {timeout:.0f}s; last: {last!r}")
