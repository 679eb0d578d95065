"""Objectives from --llm-slo-file and the `llm_slo` ini option are test items of their own, checked by
the plugin: named after the objective, selectable with -k, listed by --collect-only, in JUnit XML;
capacity objectives at every prompt size they name; a folder without test files gates a deployment."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from pytest_llmload.testing.fakeserver import FakeServer

DEPLOY = """
[[slo]]
name = "chat latency"
users = [1, 2]
prompt_tokens = 31
e2e_p95_s = {latency}

[[slo]]
name = "holds 3 users"
prompt_tokens = [31, 63]
min_users = 3
e2e_p95_s = {latency}
"""


def run(pytester: pytest.Pytester, server: FakeServer, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--llm-base-url={server.base_url}", "--llm-max-tokens=5",
                                         "-p", "no:cacheprovider", *args)


def cells_measured(pytester: pytest.Pytester) -> set[tuple[int, int]]:
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    return {(c["users"], c["prompt_tokens"]) for c in report["cells"]}


def test_a_missed_objective_fails_the_session_naming_it(pytester: pytest.Pytester,
                                                        llm_fake_server: FakeServer) -> None:
    """No test file at all: `pytest --llm-slo-file deploy.toml` is the deployment gate."""
    pytester.makefile(".toml", deploy=DEPLOY.format(latency=0.001))
    result = run(pytester, llm_fake_server, "--llm-slo-file=deploy.toml", "-v")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*deploy.toml::chat latency FAILED*", "*deploy.toml::holds 3 users FAILED*",
        "objective 'chat latency' (deploy.toml [[]?slo]] #1) missed:",
        "*SLO chat latency missed in cell users=1 prompt_tokens=31*", "*e2e p95: observed * s, limit <= 0.001 s*",
    ])
    # The capacity objective was probed at both of its prompt sizes, and both misses are named.
    result.stdout.fnmatch_lines(["*at prompt_tokens=31: expected at least 3 users, measured 0*"])
    result.stdout.fnmatch_lines(["*at prompt_tokens=63: expected at least 3 users, measured 0*"])


def test_met_objectives_pass_and_capacity_is_checked_at_every_prompt_size(pytester: pytest.Pytester,
                                                                          llm_fake_server: FakeServer) -> None:
    pytester.makefile(".toml", deploy=DEPLOY.format(latency=30))
    result = run(pytester, llm_fake_server, "--llm-slo-file=deploy.toml", "--junitxml=junit.xml")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=2)
    assert {(1, 31), (2, 31), (3, 31), (3, 63)} <= cells_measured(pytester)
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    assert set(cases) == {"chat latency", "holds 3 users"}
    props = {p.get("name"): p.get("value") for p in cases["chat latency"].iter("property")}
    assert 0 < float(props["llm_e2e_p95_s[u2-p31]"] or "nan") < 30


def test_objectives_work_with_k_and_collect_only(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makefile(".toml", deploy=DEPLOY.format(latency=30))
    collected = run(pytester, llm_fake_server, "--llm-slo-file=deploy.toml", "--collect-only", "-q")
    collected.stdout.fnmatch_lines(["deploy.toml::chat latency", "deploy.toml::holds 3 users", "2 tests collected*"])
    assert not (pytester.path / "llmload-report").exists()

    only = run(pytester, llm_fake_server, "--llm-slo-file=deploy.toml", "-k", "chat", "-v")
    only.assert_outcomes(passed=1, deselected=1)
    assert cells_measured(pytester) == {(1, 31), (2, 31)}

    by_node_id = run(pytester, llm_fake_server, "--llm-slo-file=deploy.toml", "deploy.toml::holds 3 users", "-v")
    by_node_id.assert_outcomes(passed=1)
    by_node_id.stdout.fnmatch_lines(["*deploy.toml::holds 3 users PASSED*"])


def test_unnamed_objectives_are_named_by_what_they_ask(pytester: pytest.Pytester,
                                                      llm_fake_server: FakeServer) -> None:
    pytester.makefile(".toml", slos="[[slo]]\nusers = 2\nttft_p99_ms = 30000\n\n"
                                    "[[slo]]\nmin_users = 2\nprompt_tokens = 31\ne2e_p95_s = 30\n")
    result = run(pytester, llm_fake_server, "--llm-slo-file=slos.toml", "--llm-prompt-tokens=31", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*slos.toml::ttft p99 <= 3e+04 ms at users=2 PASSED*",
                                 "*slos.toml::at least 2 users with e2e p95 <= 30 s at prompt_tokens=31 PASSED*"])


def test_ini_objectives_join_load_tests_but_not_other_runs(pytester: pytest.Pytester,
                                                          llm_fake_server: FakeServer) -> None:
    pytester.makeini(f"""
        [pytest]
        llm_base_url = {llm_fake_server.base_url}
        llm_users = 2
        llm_prompt_tokens = 31
        llm_max_tokens = 5
        llm_slo =
            users=2 e2e_p95_s=30
    """)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n",
                        test_load="def test_load(llm_load):\n    llm_load(users=2, prompt_tokens=31)\n")
    plain = pytester.runpytest_subprocess("test_plain.py", "-p", "no:cacheprovider")
    plain.assert_outcomes(passed=1)  # no load test, no objective: nothing started
    assert not (pytester.path / "llmload-report").exists() and llm_fake_server.requests_seen == 0

    load = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    load.assert_outcomes(passed=3)
    load.stdout.fnmatch_lines(["*tox.ini::e2e p95 <= 30 s at users=2 PASSED*"])


def test_a_bad_objectives_file_is_a_usage_error_before_anything_runs(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", deploy="[[slo]]\nname = 'x'\nlatency_p95 = 3\n")
    result = pytester.runpytest_subprocess("--llm-slo-file=deploy.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*deploy.toml [[]?slo]] #1: unknown objective 'latency_p95'*"])


def test_a_capacity_marker_is_checked_like_a_configured_objective(pytester: pytest.Pytester,
                                                                  llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        import pytest

        @pytest.mark.llm_slo(min_users=2, prompt_tokens=[31, 63], e2e_p95_s=0.001)
        def test_capacity():
            pass
    """)
    result = run(pytester, llm_fake_server)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*at prompt_tokens=31: expected at least 2 users*"])
    result.stdout.fnmatch_lines(["*at prompt_tokens=63: expected at least 2 users*"])


def test_an_unreachable_server_fails_each_objective_saying_why(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", deploy=DEPLOY.format(latency=30))
    result = pytester.runpytest_subprocess("--llm-slo-file=deploy.toml", "--llm-base-url=http://127.0.0.1:9",
                                           "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["objective 'chat latency' (deploy.toml [[]?slo]] #1) could not be checked:",
                                 "*127.0.0.1:9*"])


def test_start_objectives_run_after_every_other_item(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    """A start objective is judged on the starts made by its turn: it runs last, so that the cells before it
    have started the servers they need (and A/B sides taking turns are not started once more for it)."""
    (pytester.path / "deploy.toml").write_text(
        '[[slo]]\nname = "starts fast"\nstartup_s = 60\n\n' + DEPLOY.format(latency=600))
    pytester.makepyfile(test_x="def test_mine(llm_load):\n    llm_load(users=1, prompt_tokens=31)\n")
    collected = run(pytester, llm_fake_server, "--llm-slo-file=deploy.toml", "--collect-only", "-q")
    names = [line for line in collected.outlines if "::" in line]
    assert names[-1] == "deploy.toml::starts fast" and sorted(names[:-1]) == [
        "deploy.toml::chat latency", "deploy.toml::holds 3 users", "test_x.py::test_mine"], collected.outlines
