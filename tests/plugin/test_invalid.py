"""An invalid cell is never a pass or a miss: objectives on it are errors ("invalid measurement: ..."),
the reports mark it, and --llm-allow-invalid downgrades the errors to warnings.

The fake server plays another client on the same server: its /metrics counts more generated tokens
than this session's requests received, which the cross-check turns into an invalid cell."""

from __future__ import annotations

import json

import pytest

from pytest_llmload.testing.fakeserver import FakeServer

TESTS = """
    import pytest

    @pytest.mark.llm_slo(users=2, prompt_tokens=31, e2e_p95_s=30)
    def test_marker():
        pass

    def test_assert_slo(llm_load):
        llm_load(users=3, prompt_tokens=31, max_tokens=5).assert_slo(e2e_p95_s=30)

    def test_cell(llm_cell):
        assert llm_cell.e2e.p95 < 30

    def test_plain_assert(llm_load):
        assert llm_load(users=4, prompt_tokens=31, max_tokens=5).e2e.p95 < 30
"""


def run(pytester: pytest.Pytester, server: FakeServer, *args: str) -> pytest.RunResult:
    pytester.makepyfile(TESTS)
    return pytester.runpytest_subprocess(f"--llm-base-url={server.base_url}", "--llm-users=2",
                                         "--llm-prompt-tokens=31", "--llm-max-tokens=5", "-p", "no:cacheprovider",
                                         "-rA", *args)


def test_objectives_on_invalid_cells_are_errors_with_the_reason(pytester: pytest.Pytester,
                                                                llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(other_traffic_tokens=7)
    result = run(pytester, llm_fake_server)
    # marker and assert_slo: errors, not failures; llm_cell: an error at setup; plain asserts: a warning
    result.assert_outcomes(passed=1, errors=3, warnings=1)
    result.stdout.fnmatch_lines(["*invalid measurement: SLO * cannot be judged in cell users=2 prompt_tokens=31*",
                                 "*other traffic reached the server*",
                                 "*invalid measurement: this test cannot be judged in cell users=2*",
                                 "*InvalidMeasurementWarning: invalid measurement: its numbers*"])
    assert result.ret != 0
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    assert report["cells"] and all(c["valid"] is False for c in report["cells"])
    assert all("other traffic" in " ".join(c["invalid_reasons"]) for c in report["cells"])
    markdown = (pytester.path / "llmload-report" / "llmload.md").read_text()
    assert "## Invalid measurements" in markdown and "| invalid |" in markdown.replace("  ", " ")
    assert "Invalid measurements" in (pytester.path / "llmload-report" / "report.html").read_text()
    result.stdout.fnmatch_lines(["*users \\ prompt tokens*", "*invalid*", "invalid: measured, but the tool*"])


def test_allow_invalid_downgrades_the_errors_to_warnings(pytester: pytest.Pytester,
                                                         llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(other_traffic_tokens=7)
    result = run(pytester, llm_fake_server, "--llm-allow-invalid")
    result.assert_outcomes(passed=4, warnings=4)
    result.stdout.fnmatch_lines(["*InvalidMeasurementWarning*"])


def test_valid_cells_pass_as_before(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    result = run(pytester, llm_fake_server)
    result.assert_outcomes(passed=4)
