"""`--llm-load-workers` / `--llm-load-cluster` as users give them (pytester, against the fake server)."""

from __future__ import annotations

import json

import pytest

from pytest_llmload.testing.fakeserver import FakeServer

CELL_TEST = """
    def test_cell(llm_load):
        result = llm_load(users=8, prompt_tokens=31, max_tokens=5)
        assert result.ok and sorted(r.index for r in result.records) == list(range(8))
        client = result.extra["client"]
        print("BACKEND", client.get("backend"), len(client.get("workers") or []))
"""


def run(pytester: pytest.Pytester, server: FakeServer, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--llm-base-url={server.base_url}", "-p", "no:cacheprovider", "-s", *args)


def test_load_workers_run_the_cells_in_worker_processes(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile(CELL_TEST)
    result = run(pytester, llm_fake_server, "--llm-load-workers=2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*BACKEND processes 2*"])
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    [cell] = report["cells"]
    assert cell["ok"] and cell["extra"]["client"]["backend"] == "processes"
    assert cell["valid"] or cell["invalid_reasons"]  # two cores shared with the server: invalid only with a reason
    assert sorted(w["requests"] for w in cell["extra"]["client"]["workers"]) == [4, 4]


def test_the_ini_option_and_the_default(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile(CELL_TEST)
    run(pytester, llm_fake_server).stdout.fnmatch_lines(["*BACKEND None 0*"])  # one core to spare: in-process
    pytester.makeini("[pytest]\nllm_load_workers = 2\n")
    run(pytester, llm_fake_server).stdout.fnmatch_lines(["*BACKEND processes 2*"])


def test_a_bad_worker_count_is_a_usage_error_naming_the_option(pytester: pytest.Pytester,
                                                               llm_fake_server: FakeServer) -> None:
    pytester.makepyfile(CELL_TEST)
    result = run(pytester, llm_fake_server, "--llm-load-workers=0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-load-workers*'0' must be 1 or more*"])
