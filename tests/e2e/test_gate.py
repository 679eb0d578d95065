"""The regression gate on a real vLLM (tiny model), as users run it (pytester subprocesses): a baseline
round trip, and A/B in one session. Every server here is started by the plugin, so the client and the
servers are placed apart (an attached server shares the client's cores, and its cells come out invalid).
Kept short for CI: 3 repeats, two cells at most. The full-size runs (100 tokens, five sessions) are
`benchmarks/gate_real_vllm.py`, results committed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

CELLS = ["--llm-prompt-tokens=63", "-p", "no:cacheprovider"]
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


def _comparison(report: dict[str, Any], kind: str) -> dict[int, dict[str, Any]]:
    """users -> the cell's comparison, in the comparison of this kind ("baseline" or "candidate")."""
    (comparison,) = [c for c in report["extra"]["comparisons"] if c["kind"] == kind]
    return {c["users"]: c for c in comparison["cells"]}


def test_baseline_round_trip_an_invalid_baseline_cell_and_an_unchanged_candidate(pytester: pytest.Pytester) -> None:
    """Session 1 saves a baseline (3 repeats; start-up recorded and asserted). Session 2 is compared
    with it, the baseline's 32-user repeats marked invalid in the file (what the runner writes for an
    artefact), and in the same session with a candidate that only restates vLLM's default
    --max-num-seqs: 8 users is judged and no regression, 32 users against the baseline is "invalid"
    (no reference), the candidate is no regression anywhere. The threshold is 25 %: a session differs
    from another by more than its repeats show (see the README); the statistics are unit-tested."""
    pytester.makepyfile(test_matrix=MATRIX_TEST, test_start=STARTUP_SLO)
    saved = pytester.runpytest_subprocess("--llm-users=8,32", "--llm-max-tokens=32", "--llm-save-baseline=base.json",
                                          *CELLS, timeout=600)
    saved.assert_outcomes(passed=2)
    base = json.loads((pytester.path / "base.json").read_text())
    assert [c["users"] for c in base["cells"]][:6] == [8, 32, 8, 32, 8, 32]  # in passes (+ any re-measured)
    (start,) = base["extra"]["server_starts"]
    assert 1 < start["startup_s"] < 600 and 0 < start["first_ttft_s"] < 60
    assert all(c["extra"]["server_start"] == start for c in base["cells"])
    assert base["environment"]["model_weights"]["complete"]

    for cell in base["cells"]:
        if cell["users"] == 32:
            cell["valid"], cell["invalid_reasons"] = False, ["start spread 1.67 s (marked by the test)"]
    (pytester.path / "base-invalid.json").write_text(json.dumps(base))
    (pytester.path / "test_start.py").unlink()
    later = pytester.runpytest_subprocess("--llm-users=8,32", "--llm-max-tokens=32", "--llm-baseline=base-invalid.json",
                                          "--llm-candidate-server-arg=--max-num-seqs=256",
                                          "--llm-compare-fail=e2e_p50:25%", *CELLS, timeout=900)
    report = _report(pytester.path / "llmload-report")
    baseline = _comparison(report, "baseline")
    assert baseline[8]["verdict"] in ("ok", "inconclusive", "improved"), baseline[8]["gates"]
    assert baseline[32]["verdict"] == "invalid"
    assert "start spread 1.67 s (marked by the test)" in baseline[32]["gates"][0]["reason"]
    candidate = _comparison(report, "candidate")
    assert all(c["verdict"] in ("ok", "inconclusive", "improved") for c in candidate.values()), candidate
    assert later.ret == pytest.ExitCode.TESTS_FAILED  # an invalid measurement under a gate never passes silently
    later.stdout.fnmatch_lines(["*users=32*e2e_p50*invalid*invalid measurement in the baseline*"])


def test_ab_candidate_with_four_sequences_is_a_regression_at_32_users(pytester: pytest.Pytester) -> None:
    """A: vLLM's default --max-num-seqs; B: --max-num-seqs=4, so 32 users are served four at a time: the
    median request waits for about four waves before its first token (TTFT p50 x10 and more)."""
    pytester.makepyfile(MATRIX_TEST)
    result = pytester.runpytest_subprocess("--llm-users=32", "--llm-max-tokens=64",
                                           "--llm-candidate-server-arg=--max-num-seqs=4",
                                           "--llm-compare-fail=ttft_p50:10%", "--llm-compare-fail=e2e_p50:10%",
                                           *CELLS, timeout=900)
    result.assert_outcomes(passed=1)
    report = _report(pytester.path / "llmload-report")
    cell = _comparison(report, "candidate")[32]
    assert cell["verdict"] == "regression", cell["gates"]
    ttft = cell["gates"][0]
    assert ttft["verdict"] == "regression" and len(ttft["current"]) >= 3 and len(ttft["baseline"]) >= 3
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["Comparison of B (candidate) with A*regression*",
                                 "*differs: server_flags*--max-num-seqs=4*", "*regression gate FAILED*"])
    candidate = _report(pytester.path / "llmload-report" / "candidate")
    assert candidate["extra"]["server_starts"][0]["startup_s"] > 1  # B was started: its start is recorded
