"""The integration layer: real worker processes, Ray (a cluster of two nodes on this host), Chromium."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _inner_runs_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions started with pytester here are not pytest-xdist workers, even when this suite runs under
    `-n 2` (pytest-benchmark would disable itself in them); see tests/plugin/conftest.py."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
