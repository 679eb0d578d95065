"""The plugin layer: pytester sessions of the plugin against the fake server."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _inner_runs_are_not_xdist_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """When this suite itself runs under pytest-xdist (`-n 2`), the sessions its tests start inherit the
    worker's environment, and pytest-benchmark then disables itself in them: those sessions are not xdist
    workers, so they must not say so."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
