"""End to end with a real vLLM on the tiny model, the way users run it (pytester subprocesses).

One shared server (conftest `tiny_server`) serves the attach-mode tests; the tests that must start
or kill a server of their own do so through the plugin, as `pytest suites/` does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_llmload.server.placement import parse_cpu_list



@pytest.fixture
def run_token(monkeypatch: pytest.MonkeyPatch, processes_with_token: Callable[[str], list[tuple[int, str]]],
              request: pytest.FixtureRequest) -> Iterator[str]:
    """A token of this test's own in the environment its subprocesses inherit; after the test, no process
    may still carry it (the repository conftest's leak check, scoped to this test)."""
    token = f"{os.environ.get('LLMLOAD_TEST_RUN', 'run')}-{request.node.name}"
    monkeypatch.setenv("LLMLOAD_TEST_RUN", token)
    yield token
    left = processes_with_token(token)
    assert left == [], f"processes outlived the test: {left}"


def test_matrix_against_the_shared_server(pytester: pytest.Pytester, tiny_server, tiny_client_cpus: str) -> None:
    pytester.makepyfile("""
        import pytest

        def test_cell(llm_cell):
            assert llm_cell.ok, llm_cell.error
            assert all(r.prompt_tokens == llm_cell.prompt_tokens for r in llm_cell.records)
            assert all(r.output_tokens == llm_cell.max_tokens for r in llm_cell.records)
            assert llm_cell.stats.prompt_tokens_mismatches == 0

        @pytest.mark.llm_slo(users=4, prompt_tokens=296, e2e_p95_s=60, ttft_p99_ms=60000)
        def test_declared():
            pass
    """)
    result = pytester.runpytest_subprocess(f"--llm-base-url={tiny_server.base_url}", tiny_client_cpus, "--llm-users=1,4",
                                           "--llm-prompt-tokens=31,296", "--llm-max-tokens=16",
                                           "-p", "no:cacheprovider", "--junitxml=junit.xml")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*Time to resolve*", "*users*31*296*"])
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    assert {(c["users"], c["prompt_tokens"]) for c in report["cells"]} == {(1, 31), (4, 31), (1, 296), (4, 296)}
    assert all(c["ok"] and c["stats"]["requests_ok"] == c["users"] for c in report["cells"])
    metrics = report["cells"][0]["extra"]["server_metrics"]  # the section is there: real vLLM serves /metrics
    assert metrics["available"] is True and metrics["counters"]["request_success"] >= 1, metrics


def test_plugin_starts_and_stops_vllm_and_marks_cells_that_cannot_run(pytester: pytest.Pytester,
                                                                      run_token: str) -> None:
    """The default path of `pytest suites/`: the plugin builds the tiny model and starts vLLM itself.
    A 2193-token prompt does not fit the tiny model's 2048-token context: the study's "-"."""
    pytester.makepyfile("""
        def test_cells(llm_matrix, llm_server):
            assert llm_server.base_url.startswith("http://127.0.0.1:")
            assert llm_server.log_path.exists()
            assert llm_matrix.cell(users=2, prompt_tokens=31).ok
            failed = llm_matrix.cell(users=2, prompt_tokens=2193)
            assert not failed.ok and failed.errors.get("http_400") == 2, failed

        def test_failing_shows_the_server_log(llm_server):
            assert False, "deliberately"
    """)
    result = pytester.runpytest_subprocess("--llm-users=2", "--llm-prompt-tokens=31,2193",
                                           "--llm-max-tokens=8", "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*llmload: server log (last lines)*", "*2193*", "*-*"])
    _assert_placed_and_measured(json.loads((pytester.path / "llmload-report" / "llmload.json").read_text()))


def _assert_placed_and_measured(report: dict[str, Any]) -> None:
    """On the CPU the client ran alone on the last core and vLLM's whole tree on the others, as /proc
    showed it after the start; the cell that ran is a valid measurement with its time anchors."""
    cores = sorted(os.sched_getaffinity(0))
    placement = report["environment"]["placement"]
    if len(cores) < 2:
        assert placement["policy"] == "shared"
        return
    client, server = cores[-1], cores[:-1]
    assert placement["policy"] == "isolated" and placement["problems"] == []
    assert placement["client"]["cpus"] == str(client)
    names = {p["name"] for p in placement["server_processes"]}
    assert any("Worker" in n for n in names) and any("EngineCor" in n for n in names), names
    for proc in placement["server_processes"]:
        assert client not in parse_cpu_list(proc["cpus"]), proc
        assert set(parse_cpu_list(proc["cpus"])) <= set(server), proc
    [ran] = [c for c in report["cells"] if c["ok"]]
    assert ran["valid"] is True and ran["invalid_reasons"] == [], ran["invalid_reasons"]
    assert ran["extra"]["client"]["cpus"] == [client]
    assert ran["t0_monotonic_ns"] > 0 and abs(ran["t0_unix_ns"] / 1e9 - time.time()) < 600


def test_a_server_that_cannot_start_fails_the_session_with_its_log(pytester: pytest.Pytester) -> None:
    broken = pytester.path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ["NoSuchArchitecture"], "model_type": "nope"}')
    pytester.makepyfile("""
        def test_x(llm_load):
            llm_load(users=1, prompt_tokens=31)
    """)
    started = time.monotonic()
    result = pytester.runpytest_subprocess(f"--llm-model={broken}", "--llm-startup-timeout=240",
                                           "-p", "no:cacheprovider", timeout=300)
    assert time.monotonic() - started < 240
    assert result.ret != 0
    out = result.stdout.str()
    assert "could not start the server" in out and "last lines of the server log" in out, out[-3000:]


def test_ctrl_c_stops_the_server_and_keeps_partial_results(pytester: pytest.Pytester, run_token: str) -> None:
    pytester.makepyfile("""
        def test_matrix(llm_matrix):
            pass
    """)
    args = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--llm-users=1,2,4,8,16,32,64,128",
            "--llm-prompt-tokens=31,63,119", "--llm-max-tokens=100"]
    log = pytester.path / "pytest-output.txt"  # a file, not a pipe: nobody reads a pipe while we wait
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=pytester.path, stdout=out, stderr=subprocess.STDOUT)
        report = pytester.path / "llmload-report" / "llmload.json"
        deadline = time.monotonic() + 400
        while not report.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)  # wait until the first cell is recorded
        assert report.exists(), f"no cell was recorded in time: {log.read_text()[-2000:]}"
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        proc.wait(timeout=120)
    assert time.monotonic() - interrupted < 60, "the session did not end promptly after Ctrl-C"
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, log.read_text()[-2000:]
    data = json.loads(report.read_text())
    assert data["cells"] and data["interrupted"] is True


def test_server_killed_mid_cell_fails_the_rest_fast(pytester: pytest.Pytester, run_token: str) -> None:
    """SIGKILL the API server during a cell: that cell fails with "server died" and the log tail, every
    later cell fails at once (no timeouts one by one), reports are written, nothing is left running."""
    pytester.makepyfile("""
        import os, signal, threading, time

        def test_kill(llm_server, llm_session):
            llm_session.cached_cell(1, 31)  # warm up before the kill
            threading.Timer(1.0, os.kill, (llm_server.pid, signal.SIGKILL)).start()
            started = time.monotonic()
            llm_session.matrix()
            elapsed = time.monotonic() - started
            failed = [c for c in llm_session.run.cells if not c.ok]
            assert failed and all("server died" in c.error for c in failed), [c.error for c in failed]
            assert "exit code -9" in failed[0].error
            cells = [(c.users, c.prompt_tokens, c.ok) for c in llm_session.run.cells]
            assert len(failed) >= 3 and elapsed < 60, (cells, elapsed)
    """)
    result = pytester.runpytest_subprocess("--llm-users=64,128", "--llm-prompt-tokens=296,480",
                                           "--llm-max-tokens=100", "-p", "no:cacheprovider", timeout=600)
    result.assert_outcomes(passed=1)
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    assert any(not c["ok"] and "server died" in c["error"] for c in report["cells"])
