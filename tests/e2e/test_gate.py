"""The session's lifecycle and the regression gate on a real vLLM (tiny model), through the paths users
take (pytester subprocesses): `llm_load(...)`, `llm_load.cached`, `llm_cell`, `llm_matrix`, the
`llm_slo` marker, objectives from a file and `max_users`, in one session with `--llm-repeats 3`, then
against the saved baseline, then A/B with a candidate through `llm_load`.

Every server here is started by the plugin, so the client and the servers are placed apart. Each
session asserts that every measurement it recorded was made on a live server (ok) and that the counts
shown are the counts recorded. Kept short for CI: two cells of 32 output tokens. The full-size runs are
`benchmarks/gate_real_vllm.py`, results committed."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

CELLS = ["--llm-users=8,32", "--llm-prompt-tokens=63", "--llm-max-tokens=32", "-p", "no:cacheprovider"]
USER_PATHS = """
    import pytest

    @pytest.mark.parametrize("users", [8, 32])
    def test_load(llm_load, users):
        cell = llm_load(users=users, prompt_tokens=63, max_tokens=32)
        assert cell.ok, cell.error

    def test_cached(llm_load):
        assert llm_load.cached(users=8, prompt_tokens=63, max_tokens=32).ok

    def test_cell(llm_cell):
        assert llm_cell.ok, llm_cell.error

    def test_matrix(llm_matrix):
        assert all(c.ok for c in llm_matrix.cells())

    @pytest.mark.llm_slo(users=32, e2e_p95_s=600, startup_s=900)
    def test_marker(llm_load):
        llm_load.cached(users=32, prompt_tokens=63, max_tokens=32)

    def test_capacity(llm_load):
        llm_load.max_users(prompt_tokens=63, max_tokens=32, start=8, limit=8, e2e_p95_s=600).assert_at_least(8)
"""
OBJECTIVES = """
[[slo]]
name = "chat at 8 users"
users = 8
prompt_tokens = 63
max_tokens = 32
e2e_p95_s = 600
"""
A_B = """
    import pytest

    @pytest.mark.parametrize("users", [8, 32])
    def test_load(llm_load, users):
        llm_load(users=users, prompt_tokens=63, max_tokens=32)
"""


def _report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((path / "llmload.json").read_text())
    return report


def _comparison(report: dict[str, Any], kind: str) -> dict[int, dict[str, Any]]:
    """users -> the cell's comparison, in the comparison of this kind ("baseline" or "candidate")."""
    (comparison,) = [c for c in report["extra"]["comparisons"] if c["kind"] == kind]
    return {c["users"]: c for c in comparison["cells"]}


def _all_measured_live(report: dict[str, Any]) -> Counter[int]:
    """Every measurement of the session ran on a live server; the repeats per users count."""
    failed = [(c["users"], c["error"]) for c in report["cells"] if not c["ok"]]
    assert failed == [], failed
    return Counter(c["users"] for c in report["cells"])


def _shown_counts(stdout: str) -> set[str]:
    """What the matrix titles say was measured, e.g. {'median of 3 repeats'}."""
    return set(re.findall(r"median of [\d-]+ (?:valid )?repeats?(?: of [\d-]+)?", stdout))


def test_every_user_path_measures_on_a_live_server_and_the_baseline_judges_it(pytester: pytest.Pytester) -> None:
    """Session 1: every way a user measures, --llm-repeats 3, saving a baseline: every measurement ok
    (the server stays up until the last repeat), each cell with at least 3 valid repeats, the titles
    counting what was recorded. Session 2: the same server against that baseline is no regression."""
    pytester.makepyfile(test_paths=USER_PATHS)
    (pytester.path / "deploy.toml").write_text(OBJECTIVES)
    saved = pytester.runpytest_subprocess("--llm-repeats=3", "--llm-save-baseline=base.json",
                                          "--llm-slo-file=deploy.toml", *CELLS, timeout=900)
    saved.assert_outcomes(passed=9)
    report = _report(pytester.path / "llmload-report")
    repeats = _all_measured_live(report)
    assert set(repeats) == {8, 32} and min(repeats.values()) >= 3, repeats
    valid = Counter(c["users"] for c in report["cells"] if c["valid"])
    assert min(valid.values()) >= 3, valid  # an invalid repeat is measured again
    shown = _shown_counts(saved.stdout.str())
    expected = ("median of 3 repeats" if set(valid.values()) == set(repeats.values()) == {3}
                else f"median of {_span(valid)} valid repeats of {_span(repeats)}")
    assert shown == {expected}, (shown, repeats, valid)
    saved.stdout.fnmatch_lines(["*baseline base.json: a new baseline of 1 session*"])
    assert "failed measurement" not in saved.stdout.str()
    assert len(report["extra"]["server_starts"]) == 1  # one start: no fixture teardown stopped it

    later = pytester.runpytest_subprocess("--llm-baseline=base.json", "--llm-compare-fail=e2e_p50:25%",
                                          "-k", "test_load", *CELLS, timeout=900)
    later.assert_outcomes(passed=2)
    report = _report(pytester.path / "llmload-report")
    _all_measured_live(report)
    verdicts = {u: c["verdict"] for u, c in _comparison(report, "baseline").items()}
    assert set(verdicts) == {8, 32} and not {"regression", "invalid"} & set(verdicts.values()), verdicts
    assert later.ret == pytest.ExitCode.OK


def test_ab_through_llm_load_catches_four_sequences_at_32_users(pytester: pytest.Pytester) -> None:
    """A: vLLM's default --max-num-seqs; B: --max-num-seqs=4, so 32 users are served four at a time. Through
    `llm_load` tests: B's remaining repeats are measured at the end of the session on the live servers,
    and the 32-user cell is a regression (exit 1) on its median and on its p95. At 8 users the p95 of a
    repeat is near its maximum: still judged on every repeat, and said so (percentiles of small cells)."""
    pytester.makepyfile(A_B)
    result = pytester.runpytest_subprocess("--llm-candidate-server-arg=--max-num-seqs=4",
                                           "--llm-compare-fail=e2e_p50:10%", "--llm-compare-fail=e2e_p95:10%",
                                           *CELLS, timeout=900)
    result.assert_outcomes(passed=2)
    report = _report(pytester.path / "llmload-report")
    candidate = _report(pytester.path / "llmload-report" / "candidate")
    assert min(_all_measured_live(report).values()) >= 3 and min(_all_measured_live(candidate).values()) >= 3
    cell = _comparison(report, "candidate")[32]
    assert cell["verdict"] == "regression", cell["gates"]
    p95 = next(g for g in cell["gates"] if g["gate"] == "e2e_p95:10%")
    assert p95["verdict"] == "regression" and "near the maximum" not in p95["reason"], p95
    small = next(g for g in _comparison(report, "candidate")[8]["gates"] if g["gate"] == "e2e_p95:10%")
    assert all(v["used"] for v in small["current"] + small["baseline"]), small  # none left out as "few"
    assert "p95 of 8 requests: near the maximum" in small["reason"], small
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["Comparison of B (candidate) with A*regression*",
                                 "*differs: server_flags*--max-num-seqs=4*", "Verdicts:",
                                 "  e2e_p50:10% (B (candidate) vs A):*", "  e2e_p95:10% (B (candidate) vs A):*",
                                 "*regression gate FAILED*"])
    assert candidate["extra"]["server_starts"][0]["startup_s"] > 1  # B was started: its start is recorded
    # Both servers share the machine's cores, so they took turns, one pass per block: A (the tests) B B A A B.
    # Each side started twice (consecutive blocks share a start), and every start's first run of a cell was a
    # warm-up, reported apart and never one of the repeats. (An invalid repeat measured again adds blocks.)
    assert report["extra"]["ab_mode"]["mode"] == "alternate"
    for side in (report, candidate):
        starts = len(side["extra"]["server_starts"])
        assert starts >= 2 and len(side["extra"]["cold_cells"]) == 2 * starts, side["extra"]
        assert len(side["cells"]) >= 6
    result.stdout.fnmatch_lines(["*A/B: the sides took turns (alternate)*"])


def _span(counts: Counter[int]) -> str:
    low, high = min(counts.values()), max(counts.values())
    return f"{low}-{high}" if low != high else str(low)

