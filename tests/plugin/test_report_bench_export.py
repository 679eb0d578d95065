"""Cells handed to pytest-benchmark: saved by --benchmark-autosave, compared by --benchmark-compare."""

from __future__ import annotations

import json

import pytest

from pytest_llmload.report.bench_export import benchmark_entries

from factories import make_run, repeated_run

CONFTEST = """
import pytest
from pytest_llmload.report.bench_export import add_cells_to_benchmark_session
from pytest_llmload.metrics import cell_stats
from pytest_llmload.results import CellResult, RequestRecord, RunResult

def cell(users, prompt):
    recs = [RequestRecord(index=i, start=0.0, end=1.0 + users * 0.1 + i * 0.01, output_tokens=100)
            for i in range(users)]
    return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=True,
                      stats=cell_stats(recs), records=tuple(recs))

@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    # Before pytest-benchmark's own wrapper saves: that is where plugin.py will call it.
    run = RunResult(environment={"model": "m"}, cells=[cell(u, p) for u in (1, 2, 4) for p in (31, 296)])
    added = add_cells_to_benchmark_session(session.config, run)
    print("llmload cells added:", added)
    yield
"""


def test_entries_carry_the_per_request_latencies() -> None:
    run = make_run()
    entries = benchmark_entries(run)
    assert len(entries) == 5  # the failed cell has no samples
    first = entries[0].as_dict()
    assert first["name"] == "llmload_e2e[users=1-prompt_tokens=31-max_tokens=100]"
    assert first["group"] == "llmload e2e" and first["params"]["users"] == 1
    assert first["stats"]["data"] == [r.e2e for r in run.cells[0].records]


def test_repeats_are_pooled_into_one_entry_and_invalid_repeats_left_out() -> None:
    run = repeated_run({(8, 31): [1.0, 1.1, 5.0], (16, 31): [2.0, 2.1]},
                       invalid={(8, 31, 2): "stalled", (16, 31, 0): "saturated", (16, 31, 1): "saturated"})
    (entry,) = [e.as_dict() for e in benchmark_entries(run)]  # (16, 31) has no valid repeat: no entry
    valid = [c for c in run.repeats(8, 31) if c.valid]
    assert entry["name"] == "llmload_e2e[users=8-prompt_tokens=31-max_tokens=100]"
    assert entry["stats"]["data"] == [r.e2e for c in valid for r in c.records]  # 16 requests, not 24
    assert entry["extra_info"]["repeats"] == 2 and entry["extra_info"]["invalid_repeats_left_out"] == 1
    assert max(entry["stats"]["data"]) < 2  # nothing of the disturbed 5 s repeat


@pytest.fixture
def bench_project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_nothing="def test_ok():\n    pass\n")
    return pytester


def test_autosave_and_compare(bench_project: pytest.Pytester) -> None:
    result = bench_project.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-autosave",
                                                "--benchmark-storage=file://./bench")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*llmload_e2e*users=4-prompt_tokens=31*"])
    (saved,) = (bench_project.path / "bench").rglob("*.json")
    names = [b["name"] for b in json.loads(saved.read_text())["benchmarks"]]
    assert "llmload_e2e[users=2-prompt_tokens=296-max_tokens=100]" in names and len(names) == 6

    again = bench_project.runpytest_subprocess("-p", "no:cacheprovider", "--benchmark-compare",
                                               "--benchmark-storage=file://./bench",
                                               "--benchmark-compare-fail=mean:5%")
    again.assert_outcomes(passed=1)
    again.stderr.fnmatch_lines(["*Comparing against benchmarks from*"])
    again.stdout.fnmatch_lines(["*llmload_e2e*users=4-prompt_tokens=31*(0001*", "*llmload_e2e*users=4-prompt_tokens=31*(NOW)*"])


def test_nothing_is_added_when_pytest_benchmark_is_asked_to_keep_nothing(bench_project: pytest.Pytester) -> None:
    result = bench_project.runpytest_subprocess("-p", "no:cacheprovider", "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*llmload cells added: 0"])
    assert "llmload_e2e" not in result.stdout.str()


def test_disabled_benchmark_session_adds_nothing(bench_project: pytest.Pytester) -> None:
    result = bench_project.runpytest_subprocess("--benchmark-disable", "--benchmark-autosave",
                                                "--benchmark-storage=file://./bench")
    result.assert_outcomes(passed=1)
    assert not (bench_project.path / "bench").exists() or not list((bench_project.path / "bench").rglob("*.json"))
