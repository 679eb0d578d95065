"""The regression gate on a real vLLM (tiny model), as users run it (pytester subprocesses): a baseline
round trip, and A/B in one session. Kept short for CI: 32 output tokens, 3 repeats, two cells at most.
The full-size runs (100 tokens, five sessions) are `benchmarks/gate_real_vllm.py`, results committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_llmload.server.launch import VLLMServer

CELLS = ["--llm-prompt-tokens=63", "-p", "no:cacheprovider"]
SHORT = "--llm-max-tokens=32"
MATRIX_TEST = """
    def test_matrix(llm_matrix):
        for cell in llm_matrix.cells():
            assert cell.ok, cell.error
"""
# A launched server's start is an objective like any other (an attached one has none to assert).
STARTUP_SLO = """
    import pytest

    @pytest.mark.llm_slo(users=8, startup_s=600, first_ttft_ms=60000)
    def test_start(llm_matrix):
        pass
"""


def _report(path: Path) -> dict[str, Any]:
    return json.loads((path / "llmload.json").read_text())


def _verdicts(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """users -> the first gate's result in the (only) comparison."""
    return {c["users"]: c["gates"][0] for c in _cells(report)}


def _cells(report: dict[str, Any]) -> list[dict[str, Any]]:
    (comparison,) = report["extra"]["comparisons"]
    return list(comparison["cells"])


def test_baseline_round_trip_and_an_invalid_baseline_cell(pytester: pytest.Pytester, tiny_server: VLLMServer) -> None:
    """Session 1 starts its own vLLM and saves a baseline (3 repeats, start-up recorded and asserted);
    session 2 compares the shared server against it with the 32-user repeats marked invalid in the file
    (what the validity checks write for an artefact): 8 users is judged, 32 users is "invalid"."""
    pytester.makepyfile(test_matrix=MATRIX_TEST, test_start=STARTUP_SLO)
    saved = pytester.runpytest_subprocess("--llm-users=8,32", "--llm-save-baseline=base.json", *CELLS, SHORT,
                                         timeout=600)
    saved.assert_outcomes(passed=2)
    base = json.loads((pytester.path / "base.json").read_text())
    assert [c["users"] for c in base["cells"]] == [8, 32, 8, 32, 8, 32]  # three passes
    (start,) = base["extra"]["server_starts"]
    assert 1 < start["startup_s"] < 600 and 0 < start["first_ttft_s"] < 60
    assert all(c["extra"]["server_start"] == start for c in base["cells"])
    assert base["environment"]["model_weights"]["complete"]

    for cell in base["cells"]:
        if cell["users"] == 32:
            cell["valid"], cell["invalid_reasons"] = False, ["start spread 1.67 s (marked by the test)"]
    (pytester.path / "base-invalid.json").write_text(json.dumps(base))
    (pytester.path / "test_start.py").unlink()
    # 25 %: a real machine's sessions differ by more than its repeats show; the statistics are unit-tested.
    later = pytester.runpytest_subprocess(f"--llm-base-url={tiny_server.base_url}", "--llm-users=8,32",
                                          "--llm-baseline=base-invalid.json", "--llm-compare-fail=e2e_p50:25%",
                                          *CELLS, SHORT, timeout=600)
    verdicts = _verdicts(_report(pytester.path / "llmload-report"))
    assert verdicts[8]["verdict"] != "regression", verdicts[8]
    assert verdicts[32]["verdict"] == "invalid" and "start spread 1.67 s" in verdicts[32]["reason"]
    assert later.ret == pytest.ExitCode.TESTS_FAILED  # an invalid measurement under a gate never passes silently
    later.stdout.fnmatch_lines(["*users=32*e2e_p50*invalid*invalid measurement in the baseline*"])


def test_ab_candidate_with_four_sequences_is_a_regression_at_32_users(pytester: pytest.Pytester,
                                                                      tiny_server: VLLMServer) -> None:
    """A: the shared server (vLLM's default --max-num-seqs); B: a vLLM the plugin starts with
    --max-num-seqs=4, so 32 users are served four at a time: the median request waits for about four
    waves before its first token (TTFT p50 x10 and more). 100 output tokens and 4 repeats: until every
    artefact is marked invalid (a client stalled for a second on this shared 2-core machine reads a
    TTFT ten times too long), one such repeat must not be able to hide a regression of this size."""
    pytester.makepyfile(MATRIX_TEST)
    result = pytester.runpytest_subprocess(f"--llm-base-url={tiny_server.base_url}", "--llm-users=32",
                                           "--llm-candidate-server-arg=--max-num-seqs=4", "--llm-repeats=4",
                                           "--llm-compare-fail=ttft_p50:10%", "--llm-compare-fail=e2e_p50:10%",
                                           *CELLS, "--llm-max-tokens=100", timeout=600)
    result.assert_outcomes(passed=1)
    (cell,) = _cells(_report(pytester.path / "llmload-report"))
    assert cell["verdict"] == "regression", cell["gates"]
    ttft = cell["gates"][0]
    assert ttft["verdict"] == "regression" and len(ttft["current"]) == len(ttft["baseline"]) == 4
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["Comparison of B (candidate) with A*1 regression*", "*regression gate FAILED*"])
    candidate = _report(pytester.path / "llmload-report" / "candidate")
    assert candidate["extra"]["server_starts"][0]["startup_s"] > 1  # B was started: its start is recorded


def test_ab_against_the_same_server_is_not_a_regression(pytester: pytest.Pytester, tiny_server: VLLMServer) -> None:
    """A and B are the same server, measured interleaved: pure noise. (25 %: a false alarm at 10 % is rare
    but not impossible with 3 repeats, and this test must not be flaky; the rates are unit-tested.)"""
    pytester.makepyfile(MATRIX_TEST)
    result = pytester.runpytest_subprocess(f"--llm-base-url={tiny_server.base_url}", "--llm-users=8,32",
                                           f"--llm-candidate-base-url={tiny_server.base_url}",
                                           "--llm-compare-fail=e2e_p50:25%", *CELLS, SHORT, timeout=600)
    result.assert_outcomes(passed=1)
    verdicts = _verdicts(_report(pytester.path / "llmload-report"))
    assert all(v["verdict"] in ("ok", "inconclusive") for v in verdicts.values()), verdicts
