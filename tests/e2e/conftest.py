"""The e2e layer: a real vLLM (the CPU build) serving the tiny model.

One rule for a missing vLLM: every e2e test fails, saying how to install it. CI installs it, so a
silent skip would hide the tests that matter most; deselect the layer with `-m "not e2e"` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmload.server.launch import VLLMServer


def _vllm_problem() -> str | None:
    try:
        import vllm  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means: no usable vLLM here
        return f"vLLM is not importable ({type(exc).__name__}: {exc})"
    from pytest_llmload.server.cpu_setup import check_install

    problems = check_install()
    return "; ".join(problems) if problems else None


@pytest.fixture(scope="session", autouse=True)
def _vllm_installed() -> None:
    problem = _vllm_problem()
    if problem:
        pytest.fail(f"{problem}. The e2e tests need it: pip install -e '.[cpu]' && llmload-setup-cpu "
                    "(or deselect them: -m 'not e2e')", pytrace=False)


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[VLLMServer]:
    """A real vLLM serving the tiny model, shared by the e2e tests that only need a running server."""
    from pytest_llmload.server.presets import resolve_model
    from pytest_llmload.server.spec import ServerSpec

    choice = resolve_model("tiny", cache_dir)
    spec = ServerSpec(model=str(choice.model), served_model_name=choice.served_model_name,
                      log_dir=tmp_path_factory.mktemp("tiny-server"), device="cpu", cache_dir=cache_dir)
    with VLLMServer(spec) as server:
        yield server
