"""Test instruments for pytest-llmload's users and its own tests: a fake OpenAI-compatible streaming
server with exact timing and fault injection, and fixtures around it.

Enable the fixtures in a conftest.py (they are not part of the plugin every pytest run loads):

    pytest_plugins = ["pytest_llmload.testing"]

    def test_my_timeout_handling(llm_fake_server, pytester): ...

    llm_fake_server          a FakeServer on 127.0.0.1 (first token after 20 ms, then one every 2 ms)
    llm_fake_server_config   the FakeConfig it starts with; override it in your conftest.py

`python -m pytest_llmload.testing.fakeserver --help` runs the server on its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .fakeserver import FAULTS, FakeConfig, FakeServer

__all__ = ["FAULTS", "FakeConfig", "FakeServer", "llm_fake_server", "llm_fake_server_config"]


@pytest.fixture
def llm_fake_server_config() -> FakeConfig:
    """How the fake server behaves; override this fixture to change timing or faults for a module."""
    return FakeConfig(ttft_ms=20, itl_ms=2)


@pytest.fixture
def llm_fake_server(llm_fake_server_config: FakeConfig) -> Iterator[FakeServer]:
    """A fake OpenAI-compatible server on 127.0.0.1, stopped after the test."""
    with FakeServer(llm_fake_server_config) as server:
        yield server
