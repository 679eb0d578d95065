"""Shared test settings. The tests come in four layers, one folder each, marked by it:

    unit/         one module at a time; no server, or the fake one in-process   pytest tests/unit        (-m unit)
    plugin/       the plugin as users run it (pytester), against the fake server pytest tests/plugin      (-m plugin)
    integration/  real load worker processes, a Ray cluster of two nodes on this  pytest tests/integration (-m integration)
                  host, headless Chromium; against the fake server
    e2e/          a real vLLM on the tiny model (needs the `cpu` extra; minutes)  pytest tests/e2e         (-m e2e)

The fake server's fixtures come from the package's own `pytest_llmload.testing`, as a user's would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytest_llmload.testing"]

TESTS = Path(__file__).parent
LAYERS = ("unit", "plugin", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its layer (its folder), so `-m unit` selects the fast layer alone."""
    for item in items:
        try:
            layer = item.path.relative_to(TESTS).parts[0]
        except ValueError:
            continue  # a pytester-made test outside this folder
        if layer in LAYERS:
            item.add_marker(layer)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """The tiny model and vLLM's compile cache, kept between runs (as a user's would be)."""
    from pytest_llmload.options import Settings

    return Settings().cache_path()
