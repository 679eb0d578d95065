"""Shared fixtures of the test suite: a fake streaming server (fault injection, exact timing) and one
real vLLM server on the tiny model for the whole session (started on first use, ~20-30 s on 2 cores)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmload.fakeserver import FakeConfig, FakeServer


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    """A fake OpenAI-compatible server on 127.0.0.1: first token after 20 ms, then one every 2 ms."""
    with FakeServer(FakeConfig(ttft_ms=20, itl_ms=2)) as server:
        yield server


def _vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: no usable vLLM here
        return False
    return True


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model and vLLM's compile cache, kept between runs (as a user's would be)."""
    from pytest_llmload.options import Settings

    return Settings().cache_path()


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[object]:
    """A real vLLM serving the tiny model, shared by every end-to-end test of the session."""
    if not _vllm_available():
        pytest.fail("vLLM is not importable: pip install -e '.[cpu]' && llmload-setup-cpu")
    from pytest_llmload.models import resolve_model
    from pytest_llmload.server import ServerSpec, VLLMServer

    choice = resolve_model("tiny", cache_dir)
    spec = ServerSpec(model=str(choice.model), served_model_name=choice.served_model_name,
                      log_dir=tmp_path_factory.mktemp("tiny-server"), device="cpu", cache_dir=cache_dir)
    with VLLMServer(spec) as server:
        yield server
