"""Percentile gates on small cells (issue 22) on a real vLLM (tiny model), through `llm_load` tests as
users write them, A/B in one session. One session keeps CI short: B is `--max-num-seqs=4`, which cannot
change a cell of 2 or 4 users (at most 4 sequences run at once anyway), so those cells are the unchanged
server; at 32 users B serves the requests four at a time, and the tail of E2E grows several-fold."""

from __future__ import annotations

import json
from typing import Any

import pytest

LOAD_TESTS = """
    import pytest

    @pytest.mark.parametrize("users", [2, 4, 32])
    def test_cell(llm_load, users):
        llm_load(users=users, prompt_tokens=63, max_tokens=32)
"""


def _cells(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    (comparison,) = [c for c in report["extra"]["comparisons"] if c["kind"] == "candidate"]
    return {c["users"]: c for c in comparison["cells"]}


def test_e2e_p95_judges_small_cells_and_catches_four_sequences_at_32_users(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(LOAD_TESTS)
    result = pytester.runpytest_subprocess("--llm-repeats=3", "--llm-candidate-server-arg=--max-num-seqs=4",
                                           "--llm-compare-fail=e2e_p95:10%", "-p", "no:cacheprovider", timeout=900)
    result.assert_outcomes(passed=3)
    cells = _cells(json.loads((pytester.path / "llmload-report" / "llmload.json").read_text()))
    for users in (2, 4):  # the unchanged server: every repeat judged, no regression
        (gate,) = cells[users]["gates"]
        assert gate["verdict"] in ("ok", "inconclusive", "improved"), gate
        assert all(v["used"] for v in gate["current"] + gate["baseline"]), gate  # none left out as "few"
        assert f"p95 of {users} requests: near the maximum" in gate["reason"], gate
        if gate["verdict"] == "inconclusive":
            assert "repeats a side would" in gate["reason"] or "more than 100 repeats" in gate["reason"], gate
    (gate,) = cells[32]["gates"]
    assert gate["verdict"] == "regression", gate
    assert len([v for v in gate["current"] if v["used"]]) >= 3 and "near the maximum" not in gate["reason"]
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*regression gate FAILED*"])
