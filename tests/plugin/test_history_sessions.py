"""History, trend and exports through the plugin, as users run them (pytester against the fake server):
two sessions append to one history; the second's report.html draws the trend of both; a third is
judged against the history as its baseline; exports land in the report folder."""

from __future__ import annotations

import json
import sqlite3

import pytest

from pytest_llmload.testing.fakeserver import FakeServer

TEST = """
    def test_cell(llm_load):
        llm_load(users=4, prompt_tokens=31, max_tokens=8)
"""


def test_sessions_append_to_the_history_and_a_later_one_is_judged_against_it(
        pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile(TEST)
    args = [f"--llm-base-url={llm_fake_server.base_url}", "--llm-history=hist.sqlite", "--llm-history-label=main",
            "--llm-repeats=2", "-p", "no:cacheprovider"]
    for _ in range(2):
        pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    with sqlite3.connect(pytester.path / "hist.sqlite") as db:
        assert db.execute("select count(*) from sessions").fetchone()[0] == 2
    html = (pytester.path / "llmload-report" / "report.html").read_text()
    assert "Trend over the history" in html
    judged = pytester.runpytest_subprocess(*args, "--llm-baseline=hist.sqlite:main", "--llm-compare-fail=e2e_p50:50%",
                                           "--llm-export=vllm-bench,github-benchmark,bencher")
    judged.assert_outcomes(passed=1)
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    (comparison,) = report["extra"]["comparisons"]
    assert comparison["kind"] == "baseline" and comparison["cells"][0]["verdict"] != "regression"
    exported = {p.name for p in (pytester.path / "llmload-report").rglob("*") if p.is_file()}
    assert any(name.endswith(".json") and "bencher" in name for name in exported), exported
    assert any("github" in name for name in exported), exported
    assert list((pytester.path / "llmload-report").rglob("*vllm*")) != []
