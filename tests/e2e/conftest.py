"""The e2e layer: a real vLLM (the CPU build) serving the tiny model.

One rule for a missing vLLM: every e2e test fails, saying how to install it. CI installs it, so a
silent skip would hide the tests that matter most; deselect the layer with `-m "not e2e"` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmload.server.launch import VLLMServer
from pytest_llmload.server.placement import allowed_cpus, format_cpu_list, plan_cpu_placement


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


PLACEMENT = plan_cpu_placement(allowed_cpus())


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[VLLMServer]:
    """A real vLLM serving the tiny model, shared by the e2e tests that only need a running server.

    It is placed the way the plugin places a server it starts (its whole tree off the last core), so that
    a session attaching to it with `--llm-client-cpus` (`tiny_client_cpus`) measures without sharing a core
    with it, as the plugin's own launch would.
    """
    from pytest_llmload.server.presets import resolve_model
    from pytest_llmload.server.spec import ServerSpec

    choice = resolve_model("tiny", cache_dir)
    spec = ServerSpec(model=str(choice.model), served_model_name=choice.served_model_name,
                      log_dir=tmp_path_factory.mktemp("tiny-server"), device="cpu", cache_dir=cache_dir,
                      cpus=PLACEMENT.server_cpus, env=PLACEMENT.server_env())
    with VLLMServer(spec) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_client_cpus() -> str:
    """`--llm-client-cpus=...` for a session attached to `tiny_server`: the cores the server was kept off."""
    return f"--llm-client-cpus={format_cpu_list(PLACEMENT.client_cpus)}"
