"""The plugin as users run it (pytester, in a subprocess) against the fake server: fixtures, markers,
parametrization, failure messages, JUnit properties, reports. The real-vLLM path is in test_e2e.py."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from pytest_llmload.testing.fakeserver import FakeServer



def run(pytester: pytest.Pytester, server: FakeServer, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--llm-base-url={server.base_url}", "-p", "no:cacheprovider", *args)


def test_llm_load_measures_a_cell_and_writes_reports(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        def test_cell(llm_load):
            result = llm_load(users=4, prompt_tokens=31, max_tokens=10)
            assert result.ok and result.stats.requests_ok == 4
            assert 0.015 < result.ttft.p50 < 1.0
            assert result.e2e.p95 < 5 and result.tokens_per_s_per_user.p50 > 0
            assert result.total_tokens_per_s > 0 and result.errors == {}
            assert all(r.output_tokens == 10 and r.prompt_tokens == 31 for r in result.records)
    """)
    result = run(pytester, llm_fake_server)
    result.assert_outcomes(passed=1)
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    assert [(c["users"], c["prompt_tokens"], c["ok"]) for c in report["cells"]] == [(4, 31, True)]
    result.stdout.fnmatch_lines(["*Time to resolve*", "*pytest-llmload reports:*"])


def test_marker_failure_names_cell_metric_observed_and_limit(pytester: pytest.Pytester,
                                                             llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llm_slo(ttft_p99_ms=1)
        def test_fast_first_token(llm_load):
            llm_load(users=2, prompt_tokens=31, max_tokens=5)
    """)
    result = run(pytester, llm_fake_server, "--junitxml=junit.xml")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*SLOViolation: SLO missed in cell users=2 prompt_tokens=31 max_tokens=5*",
                                 "*ttft p99: observed * ms, limit <= 1 ms*", "*distribution: p50*"])
    props = {p.get("name"): p.get("value") for p in ET.parse(pytester.path / "junit.xml").iter("property")}
    assert 15 < float(props["llm_ttft_p99_ms[u2-p31]"] or "nan") < 1000  # in the unit its name says: ms (about 20)
    assert props["llm_error_rate_max_fraction[u2-p31]"] == "0"


def test_declarative_marker_without_a_body_reads_the_matrix(pytester: pytest.Pytester,
                                                            llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llm_slo(users=2, prompt_tokens=31, e2e_p95_s=30)
        def test_latency():
            pass

        @pytest.mark.llm_slo(users=2, prompt_tokens=31, ttft_p99_ms=0.001)
        def test_impossible():
            pass
    """)
    result = run(pytester, llm_fake_server, "--llm-max-tokens=5", "--junitxml=junit.xml")
    # The empty bodies prove nothing: the plugin measured the cell and checked each marker against it.
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*_ test_impossible _*", "*SLOViolation: SLO missed in cell users=2 prompt_tokens=31*"])
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_latency"].iter("property")}
    assert 0 < float(props["llm_e2e_p95_s[u2-p31]"] or "nan") < 30
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    assert [(c["users"], c["prompt_tokens"], c["ok"]) for c in report["cells"]] == [(2, 31, True)]  # once for both


def test_unknown_marker_key_is_a_usage_error(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llm_slo(latency_p95=3)
        def test_x():
            pass
    """)
    result = run(pytester, llm_fake_server)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown objective 'latency_p95'*"])


def test_llm_cell_parametrizes_over_the_matrix(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        def test_cell(llm_cell):
            assert llm_cell.ok
    """)
    result = run(pytester, llm_fake_server, "--llm-users=1,3", "--llm-prompt-tokens=31,63", "--llm-max-tokens=5", "-v")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*test_cell?u1-p31?*PASSED*", "*test_cell?u3-p63?*PASSED*"])


def test_llm_matrix_and_configured_slos(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makeini("""
        [pytest]
        llm_users = 1,2
        llm_prompt_tokens = 31
        llm_max_tokens = 5
        llm_slo =
            users=2 e2e_p95_s=0.001
    """)
    pytester.makepyfile("""
        def test_matrix(llm_matrix, llm_slos):
            assert llm_matrix.cell(users=2, prompt_tokens=31).ok
            assert len(llm_matrix.cells()) == 2
            assert [slo.title for slo in llm_slos] == ["e2e p95 <= 0.001 s at users=2"]
    """)
    result = run(pytester, llm_fake_server, "-v")
    result.assert_outcomes(passed=1, failed=1)  # the ini objective is an item of its own
    result.stdout.fnmatch_lines(["*tox.ini::e2e p95 <= 0.001 s at users=2 FAILED*",
                                 "*e2e p95: observed * s, limit <= 0.001 s*"])


@pytest.mark.parametrize("args, message", [
    (["--llm-users=0"], "*--llm-users*'0' must be 1 or more*"),
    (["--llm-users=-3"], "*--llm-users*'-3' must be 1 or more*"),
    (["--llm-users=abc"], "*--llm-users*'abc' is not a whole number*"),
    (["--llm-max-tokens=0"], "*--llm-max-tokens*'0' must be 1 or more*"),
    (["--llm-request-timeout=soon"], "*--llm-request-timeout*'soon' is not a number*"),
    (["--llm-model=no-such-preset"], "*--llm-model*no-such-preset*"),
])
def test_bad_options_fail_at_parse_time(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_api_key_never_appears_in_output_or_reports(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    secret = "sk-test-DO-NOT-LEAK-4242"
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llm_slo(ttft_p99_ms=1)
        def test_fail(llm_load):
            llm_load(users=1, prompt_tokens=31, max_tokens=3)
    """)
    result = run(pytester, llm_fake_server, f"--llm-api-key={secret}", "--junitxml=junit.xml",
                 "--llm-save-baseline=base.json")
    result.assert_outcomes(failed=1)
    assert secret not in result.stdout.str() + result.stderr.str()
    for path in pytester.path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_cells_are_saved_as_pytest_benchmark_entries(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        def test_cell(llm_load):
            assert llm_load(users=3, prompt_tokens=31, max_tokens=5).ok
    """)
    run(pytester, llm_fake_server, "--benchmark-autosave").assert_outcomes(passed=1)
    (saved,) = pytester.path.glob(".benchmarks/*/*.json")
    benchmarks = json.loads(saved.read_text())["benchmarks"]
    (entry,) = [b for b in benchmarks if b["name"].startswith("llmload_e2e")]
    assert entry["stats"]["rounds"] == 3 and entry["stats"]["mean"] > 0


def test_regression_gate_fails_the_session(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        def test_cell(llm_load):
            assert llm_load(users=8, prompt_tokens=31, max_tokens=20).ok
    """)
    # Two sessions: a baseline's sessions show how much a session differs from the next one.
    for _ in range(2):
        run(pytester, llm_fake_server, "--llm-save-baseline=base.json").assert_outcomes(passed=1)
    llm_fake_server.configure(itl_ms=8)  # 4x slower decoding: a real regression
    result = run(pytester, llm_fake_server, "--llm-baseline=base.json", "--llm-compare-fail=e2e_p50:10%")
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*regression*", "*regression gate FAILED*"])
    llm_fake_server.configure(itl_ms=2)
    same = run(pytester, llm_fake_server, "--llm-baseline=base.json", "--llm-compare-fail=e2e_p50:50%")
    assert same.ret == pytest.ExitCode.OK, same.stdout.str()


def test_damaged_baseline_fails_the_session_naming_the_file(pytester: pytest.Pytester,
                                                            llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        def test_cell(llm_load):
            assert llm_load(users=1, prompt_tokens=31, max_tokens=3).ok
    """)
    damaged = pytester.path / "base.json"
    damaged.write_text('{"schema_version": 1, "cells": [')
    result = run(pytester, llm_fake_server, "--llm-baseline=base.json", "--llm-compare-fail=e2e_p50:10%")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*comparing with the baseline*base.json*"])
    assert damaged.read_text() == '{"schema_version": 1, "cells": ['  # nothing overwritten


def test_bad_gate_fails_at_parse_time(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("--llm-baseline=b.json", "--llm-compare-fail=latency:10%")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-compare-fail*unknown metric 'latency'*"])


def test_a_plain_assert_names_the_cell_and_shows_the_distribution(pytester: pytest.Pytester,
                                                                  llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        def test_plain(llm_load):
            result = llm_load(users=2, prompt_tokens=31, max_tokens=4)
            assert result.e2e.p95 < 0.001
    """)
    result = run(pytester, llm_fake_server)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*assert * < 0.001*",
                                 "*where * = <Distribution p50 * p95 * (n=2)>.p95*",
                                 "*where <Distribution * = <CellResult users=2 prompt_tokens=31 max_tokens=4 "
                                 "(2 requests, ok)>.e2e*"])


def test_open_loop_and_capacity_through_the_fixture(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        def test_open_loop(llm_load):
            cell = llm_load.open_loop(rate=20, duration_s=1.0, prompt_tokens=31, max_tokens=5, poisson=False)
            assert cell.ok and cell.mode == "open" and cell.rate == 20
            assert 18 <= cell.stats.requests_ok <= 22

        def test_capacity(llm_load):
            # The fake server answers every request in ~30 ms whatever the load: no miss up to the limit.
            capacity = llm_load.max_users(prompt_tokens=31, max_tokens=5, limit=16, e2e_p95_s=5)
            assert capacity.max_users == 16 and capacity.first_fail is None
            assert [p.users for p in capacity.probes] == [1, 2, 4, 8, 16]
            capacity.assert_at_least(16)
    """)
    run(pytester, llm_fake_server).assert_outcomes(passed=2)


def test_a_load_test_whose_cell_could_not_run_fails_unless_it_expects_it(
        pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    """The server refuses every request (http_500): `llm_load(...)` fails its test with the cause; a test
    that expects a failed cell says so with allow_failed=True and reads `.ok` itself."""
    llm_fake_server.configure(fault="http_500")
    pytester.makepyfile("""
        def test_load(llm_load):
            llm_load(users=2, prompt_tokens=31, max_tokens=3)

        def test_expects_it(llm_load):
            cell = llm_load(users=2, prompt_tokens=31, max_tokens=3, allow_failed=True)
            assert not cell.ok and "http_5xx" in cell.error
    """)
    result = run(pytester, llm_fake_server)
    result.assert_outcomes(passed=1, failed=1)
    failed = ("*CellFailedError: cell users=2 prompt_tokens=31 max_tokens=3 failed (server): the server could not "
              "run the cell: *http_5xx*")
    result.stdout.fnmatch_lines([failed, "*allow_failed=True*"])
