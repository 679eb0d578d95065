"""A real vLLM launched from an install named explicitly (the environment's folder, as `--llm-vllm DIR`):
it runs from that install's Python, gets the side's own environment variables, and its provenance
carries the versions read from that install. Then an A/B session through the plugin whose candidate
runs from `--llm-candidate-vllm`: each side's report records its own install's vLLM and torch.

CI has one vLLM install, so the install named is the running environment's. A second install (another
vLLM version in another venv) is used when LLMLOAD_E2E_SECOND_VLLM names it; the A/B session then also
shows the versions differing beside the verdicts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pytest_llmload.observe.environment import collect_environment
from pytest_llmload.server.install import VllmInstall, resolve_install
from pytest_llmload.server.launch import VLLMServer
from pytest_llmload.server.placement import allowed_cpus, plan_cpu_placement
from pytest_llmload.server.spec import ServerSpec, merge_env
from pytest_llmload.server.tiny import build_tiny_model

MARK = ("LLMLOAD_E2E_SIDE", "A-from-its-install")


@pytest.fixture(scope="module")
def install() -> VllmInstall:
    return resolve_install(sys.prefix, option="--llm-vllm")  # the folder form


@pytest.fixture(scope="module")
def server(install: VllmInstall, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServer]:
    placement = plan_cpu_placement(allowed_cpus())
    spec = ServerSpec(model=str(build_tiny_model(cache_dir)), served_model_name="tiny", device="cpu",
                      startup_timeout_s=240.0, cache_dir=cache_dir, log_dir=tmp_path_factory.mktemp("logs"),
                      cpus=placement.server_cpus, install=install,
                      env=merge_env(placement.server_env(), dict([MARK])))
    with VLLMServer(spec) as srv:
        yield srv


def test_the_server_runs_from_the_named_install(server: VLLMServer, install: VllmInstall) -> None:
    psutil = pytest.importorskip("psutil")
    assert install.python == f"{sys.prefix}/bin/python" and install.prefix == sys.prefix
    assert server.argv[:4] == [install.python, "-m", "vllm.entrypoints.cli.main", "serve"]
    assert server.install is install
    assert psutil.Process(server.pid).environ().get(MARK[0]) == MARK[1]  # the side's own variables
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 4, "ignore_eos": True}
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60, trust_env=False)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 4


def test_provenance_comes_from_that_install(server: VLLMServer, install: VllmInstall) -> None:
    env = collect_environment(server=server, model="tiny")
    assert env["vllm_install"] == install.to_dict()
    assert env["torch_version"] == install.torch_version and install.torch_version
    reported = server.version()
    assert reported and install.vllm_version and install.vllm_version.split("+")[0] == reported.split("+")[0]
    assert env["vllm_version"] == reported


SECOND = os.environ.get("LLMLOAD_E2E_SECOND_VLLM") or sys.prefix
A_B = """
    def test_load(llm_load):
        assert llm_load(users=2, prompt_tokens=31, max_tokens=8).ok
"""


def test_each_side_of_an_ab_session_runs_from_its_own_install(pytester: pytest.Pytester) -> None:
    """B from --llm-candidate-vllm (the second install, or this one again in CI), A from the running
    Python: each report's environment names its own install and the versions read from it."""
    second = resolve_install(SECOND, option="--llm-candidate-vllm")
    here = resolve_install(None)
    pytester.makepyfile(A_B)
    # One session for two proofs (CI time): the installs, and --llm-repeats auto stopped by its budget. A gate
    # too tight for 2 repeats to decide (0.01 %) asks for another look, but a block a side (two server
    # starts and the cell) cannot end within 3 s: the session stops, says so, and judges what it has.
    result = pytester.runpytest_subprocess(f"--llm-candidate-vllm={SECOND}",
                                           f"--llm-candidate-server-env={'='.join(MARK)}", "--llm-warmup=none",
                                           "--llm-repeats=auto", "--llm-gate-budget=0.05",
                                           "--llm-compare-fail=e2e_p50:0.01%", "-p", "no:cacheprovider", timeout=900)
    result.assert_outcomes(passed=1)
    a = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    b = json.loads((pytester.path / "llmload-report" / "candidate" / "llmload.json").read_text())
    assert all(c["ok"] for c in a["cells"] + b["cells"]) and b["cells"]
    assert a["environment"]["vllm_install"] == here.to_dict()
    assert b["environment"]["vllm_install"] == second.to_dict()
    assert b["environment"]["server_args"][0] == second.python
    for report, install in ((a, here), (b, second)):
        env = report["environment"]
        assert env["torch_version"] == install.torch_version
        assert install.vllm_version and env["vllm_version"].split("+")[0] == install.vllm_version.split("+")[0]
    if second.vllm_version != here.vllm_version:
        result.stdout.fnmatch_lines(["*differs: vllm_version*"])
    looks = a["extra"]["repeats_auto"]
    assert a["extra"]["ab_mode"]["mode"] == "alternate"
    assert 2 <= len(a["cells"]) <= 4 and 2 <= len(b["cells"]) <= 4  # 2 repeats a side (+ re-measured invalid)
    if looks["undecided"]:  # as expected at 2 repeats: the budget stopped it before another block
        assert looks["stopped"].startswith("--llm-gate-budget 0.05 min spent") and looks["looks"] == 1, looks
        result.stdout.fnmatch_lines(["*--llm-repeats auto: 1 look(s) of at most 9 *; --llm-gate-budget 0.05 min "
                                     "spent: 1 cell(s) still inconclusive"])
    else:  # a start-to-start difference large enough to decide at 0.01 % even with 2 repeats
        assert a["extra"]["verdict"]["verdict"] in ("regression", "improved"), looks
