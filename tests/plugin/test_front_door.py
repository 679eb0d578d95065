"""The plugin as every pytest run of an environment meets it: `pytest --help` works, a project that does
not use it sees nothing of it, pytest-xdist is refused with a reason, pytest-benchmark shows our cells
only when asked to store or compare them."""

from __future__ import annotations

import json
import re

import pytest

from pytest_llmload.options import OPTIONS
from pytest_llmload.testing.fakeserver import FakeServer

UNRELATED_TESTS = """
    import warnings

    def test_one():
        assert 1 + 1 == 2

    def test_two(tmp_path):
        (tmp_path / "x").write_text("y")
"""


def _normalized(result: pytest.RunResult) -> list[str]:
    """Output lines without what differs between two runs of the same tests (timings, plugin list)."""
    lines = result.stdout.lines + result.stderr.lines
    return [re.sub(r"\d+\.\d+s", "T", line) for line in lines if not line.startswith(("plugins:", "rootdir:"))]


def test_help_lists_every_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == pytest.ExitCode.OK, result.stderr.str()
    listed = set(re.findall(r"--llm-[a-z-]+", result.stdout.str()))
    assert {o.flag for o in OPTIONS} | {"--llm-list-presets"} <= listed
    result.stdout.fnmatch_lines(["*--llm-compare-fail=METRIC:PCT*", "*e2e_p95:10% (repeatable*"])


def test_an_unrelated_project_sees_nothing_of_the_plugin(pytester: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Same output as with the plugin disabled, no warning (-W error), no report folder, no model built."""
    cache = pytester.path.parent / "llmload-cache"
    monkeypatch.setenv("LLMLOAD_CACHE_DIR", str(cache))
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    pytester.makepyfile(UNRELATED_TESTS)
    with_plugin = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", "-rA")
    without = pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", "-rA", "-p", "no:llmload")
    with_plugin.assert_outcomes(passed=2)
    assert _normalized(with_plugin) == _normalized(without)
    assert not (pytester.path / "llmload-report").exists() and not cache.exists()


def test_an_unrelated_project_runs_under_xdist(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(UNRELATED_TESTS)
    result = pytester.runpytest_subprocess("-n", "2", "-W", "error", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert "llmload" not in result.stdout.str().split("plugins:")[-1].split("\n", 1)[-1]


def test_xdist_with_a_load_option_is_a_usage_error(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("def test_cell(llm_load):\n    llm_load(users=1, prompt_tokens=31, max_tokens=2)\n")
    result = pytester.runpytest_subprocess("-n", "2", f"--llm-base-url={llm_fake_server.base_url}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-base-url: pytest-llmload runs load tests in one process*-n 2*"
                                 "would disturb each other's numbers*add -n 0 (or -p no:xdist)*"])
    assert llm_fake_server.requests_seen == 0


def test_xdist_fails_the_load_tests_and_runs_the_others(pytester: pytest.Pytester,
                                                       llm_fake_server: FakeServer) -> None:
    """Configured in the ini file only, the run starts; the load tests fail with the reason, before any
    server is started or contacted, and the other tests run as usual."""
    pytester.makeini(f"[pytest]\nllm_base_url = {llm_fake_server.base_url}\n")
    pytester.makepyfile("""
        import pytest

        def test_plain():
            pass

        def test_cell(llm_load):
            llm_load(users=1, prompt_tokens=31, max_tokens=2)

        @pytest.mark.llm_slo(users=1, prompt_tokens=31, e2e_p95_s=10)
        def test_declared():
            pass
    """)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["*pytest-llmload runs load tests in one process*"])
    assert llm_fake_server.requests_seen == 0
    assert not (pytester.path / "llmload-report").exists()


LOAD_TEST = """
    def test_cell(llm_load):
        assert llm_load(users=3, prompt_tokens=31, max_tokens=5).ok
"""


def test_pytest_benchmark_shows_no_table_of_cells_unless_asked(pytester: pytest.Pytester,
                                                              llm_fake_server: FakeServer) -> None:
    pytester.makepyfile(LOAD_TEST)
    plain = pytester.runpytest_subprocess(f"--llm-base-url={llm_fake_server.base_url}", "-p", "no:cacheprovider")
    plain.assert_outcomes(passed=1)
    plain.stdout.fnmatch_lines(["*Time to resolve*"])  # our own matrix
    assert "llmload_e2e" not in plain.stdout.str()
    assert "Name (time in" not in plain.stdout.str()  # the header of pytest-benchmark's table
    assert not list(pytester.path.glob(".benchmarks/**/*.json"))  # (pytest-benchmark makes the folder itself)

    asked = pytester.runpytest_subprocess(f"--llm-base-url={llm_fake_server.base_url}", "-p", "no:cacheprovider",
                                          "--benchmark-json=bench.json")
    asked.assert_outcomes(passed=1)
    (entry,) = json.loads((pytester.path / "bench.json").read_text())["benchmarks"]
    assert entry["name"] == "llmload_e2e[users=3-prompt_tokens=31-max_tokens=5]" and entry["stats"]["rounds"] == 3


def test_works_without_pytest_benchmark(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    """pytest-benchmark is an optional extra: without it (here: disabled) nothing is missing or reported."""
    pytester.makepyfile(LOAD_TEST)
    result = pytester.runpytest_subprocess(f"--llm-base-url={llm_fake_server.base_url}", "-p", "no:cacheprovider",
                                           "-p", "no:benchmark", "-W", "error")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Time to resolve*", "*pytest-llmload reports:*"])
    assert "pytest-llmload: " not in result.stdout.str()  # no problem line from the end of the session
