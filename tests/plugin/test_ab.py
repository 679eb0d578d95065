"""Repeats and A/B in one session, as users run them (pytester subprocess), against two fake servers:
the session's own (A, --llm-base-url) and a candidate (B, --llm-candidate-base-url). The real-vLLM
proof is tests/e2e/test_gate.py."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from pytest_llmload.testing.fakeserver import FakeConfig, FakeServer

TWO_CELLS = """
    def test_cells(llm_load):
        assert llm_load(users=2, prompt_tokens=31, max_tokens=8).ok
        assert llm_load(users=4, prompt_tokens=31, max_tokens=8).ok
"""


@pytest.fixture
def candidate() -> Iterator[FakeServer]:
    with FakeServer(FakeConfig(ttft_ms=20, itl_ms=2)) as server:
        yield server


def ab(pytester: pytest.Pytester, a: FakeServer, b: FakeServer, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--llm-base-url={a.base_url}", f"--llm-candidate-base-url={b.base_url}",
                                         "-p", "no:cacheprovider", *args)


def _blocks(a: FakeServer, b: FakeServer) -> list[tuple[str, int]]:
    """The measurements in the order the servers received them: (server, requests in the cell)."""
    arrivals = sorted([(t.recv, "A") for t in a.truth] + [(t.recv, "B") for t in b.truth])
    blocks: list[tuple[str, int]] = []
    last = -1.0
    for at, server in arrivals:
        if blocks and blocks[-1][0] == server and at - last < 0.01:  # a cell's requests arrive together
            blocks[-1] = (server, blocks[-1][1] + 1)
        else:
            blocks.append((server, 1))
        last = at
    return blocks


def test_every_cell_runs_on_both_servers_interleaved_over_the_repeats(
        pytester: pytest.Pytester, llm_fake_server: FakeServer, candidate: FakeServer) -> None:
    pytester.makepyfile(TWO_CELLS)
    result = ab(pytester, llm_fake_server, candidate, "--llm-compare-fail=e2e_p50:10%")
    result.assert_outcomes(passed=1)
    # Repeats default to 3 with a candidate; cell 1 then 2 in each pass, A first or B first alternating.
    # A gate warms each cell once per start of its server (--llm-warmup=cell): the first measurement of a
    # cell on a side is preceded by an unrecorded run of it.
    assert _blocks(llm_fake_server, candidate) == [
        ("A", 2), ("A", 2), ("B", 2), ("B", 2), ("B", 4), ("B", 4), ("A", 4), ("A", 4),  # pass 1 (the test)
        ("B", 2), ("A", 2), ("A", 4), ("B", 4),  # pass 2 (after the last test)
        ("A", 2), ("B", 2), ("B", 4), ("A", 4)]  # pass 3
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    assert [(c["users"]) for c in report["cells"]] == [2, 4, 2, 4, 2, 4]  # every repeat, in order
    assert [c["cell"] for c in report["extra"]["cold_cells"]] == ["users=2 prompt_tokens=31 max_tokens=8",
                                                         "users=4 prompt_tokens=31 max_tokens=8"]
    (comparison,) = report["extra"]["comparisons"]
    assert comparison["kind"] == "candidate" and len(comparison["cells"]) == 2
    gate = comparison["cells"][0]["gates"][0]
    assert len(gate["baseline"]) == len(gate["current"]) == 3 and all(v["used"] for v in gate["current"])
    candidate_report = json.loads((pytester.path / "llmload-report" / "candidate" / "llmload.json").read_text())
    assert len(candidate_report["cells"]) == 6
    result.stdout.fnmatch_lines(["A (this session's server):", "*B (candidate):*",
                                 "Comparison of B (candidate) with A*", "*e2e_p50 * -> *"])


def test_a_slower_candidate_fails_the_session_and_the_same_one_does_not(
        pytester: pytest.Pytester, llm_fake_server: FakeServer, candidate: FakeServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(TWO_CELLS)
    candidate.configure(itl_ms=8)  # 4x slower decoding
    step_summary = pytester.path / "step-summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    slow = ab(pytester, llm_fake_server, candidate, "--llm-compare-fail=e2e_p50:10%")
    assert slow.ret == pytest.ExitCode.TESTS_FAILED
    slow.stdout.fnmatch_lines(["*regression*", "Verdicts:",
                               "  e2e_p50:10% (B (candidate) vs A): 0 ok, 0 improved, 2 regression*",
                               "*gate: B (candidate) vs A: users=4*regression*", "*regression gate FAILED*"])
    # What CI acts on: the verdict in llmload.json, and the A -> B table on the job's summary page.
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    assert report["extra"]["verdict"]["verdict"] == "regression"
    assert report["extra"]["verdict"]["gates"]["e2e_p50:10%"]["counts"]["regression"] == 2
    page = step_summary.read_text()
    assert page.startswith("earlier step\n## pytest-llmload: regression")
    assert "### Comparison of B (candidate) with A" in page and page.count("| regression |") == 2
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    candidate.configure(itl_ms=2)
    same = ab(pytester, llm_fake_server, candidate, "--llm-compare-fail=e2e_p50:50%")
    assert same.ret == pytest.ExitCode.OK, same.stdout.str()
    assert "regression gate FAILED" not in same.stdout.str()


def test_one_repeat_is_inconclusive_and_strict_fails_it(pytester: pytest.Pytester, llm_fake_server: FakeServer,
                                                         candidate: FakeServer) -> None:
    pytester.makepyfile(TWO_CELLS)
    candidate.configure(itl_ms=8)
    once = ab(pytester, llm_fake_server, candidate, "--llm-repeats=1", "--llm-compare-fail=e2e_p50:10%")
    assert once.ret == pytest.ExitCode.OK  # 4x slower, but one run cannot show the noise between runs
    once.stdout.fnmatch_lines(["*inconclusive*needs 2 on each side*",
                               "*2 gate verdict(s) inconclusive: not failing the session (--llm-compare-strict*"])
    strict = ab(pytester, llm_fake_server, candidate, "--llm-repeats=1", "--llm-compare-fail=e2e_p50:10%",
                "--llm-compare-strict")
    assert strict.ret == pytest.ExitCode.TESTS_FAILED


def test_matrix_runs_in_passes(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile("""
        def test_matrix(llm_matrix):
            assert len(llm_matrix.run.cells) == 4
    """)
    result = pytester.runpytest_subprocess(f"--llm-base-url={llm_fake_server.base_url}", "-p", "no:cacheprovider",
                                           "--llm-users=1,3", "--llm-prompt-tokens=31", "--llm-max-tokens=4",
                                           "--llm-repeats=2")
    result.assert_outcomes(passed=1)
    sizes = [n for _, n in _blocks(llm_fake_server, FakeServer())]
    assert sizes == [1, 3, 1, 3]  # pass by pass, not back to back


def test_a_candidate_that_cannot_be_reached_is_named(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makepyfile(TWO_CELLS)
    result = pytester.runpytest_subprocess(f"--llm-base-url={llm_fake_server.base_url}",
                                           "--llm-candidate-base-url=http://127.0.0.1:9", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the candidate server (B) could not be started or reached*127.0.0.1:9*"])


def test_repeats_auto_stops_when_the_gates_conclude_and_says_how(
        pytester: pytest.Pytester, llm_fake_server: FakeServer, candidate: FakeServer) -> None:
    """Through llm_load tests: a clearly slower candidate concludes at the first look (2 repeats a side);
    the same speed under a tight gate is measured again until --llm-max-repeats, then inconclusive."""
    pytester.makepyfile(TWO_CELLS)
    candidate.configure(itl_ms=8)
    slow = ab(pytester, llm_fake_server, candidate, "--llm-repeats=auto", "--llm-compare-fail=e2e_p50:10%")
    assert slow.ret == pytest.ExitCode.TESTS_FAILED
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    # 2 repeats a side at the first look; at 99.4 % a bound (5 % over 9 looks) 2 repeats may not yet decide
    # a doubled latency: a look or two more, of the cells still undecided only.
    looks = report["extra"]["repeats_auto"]
    assert looks["looks"] <= 3 and looks["undecided"] == [] and looks["stopped"] == "every gated verdict is conclusive"
    assert [c["users"] for c in report["cells"][:4]] == [2, 4, 2, 4] and len(report["cells"]) <= 4 + 2 * 2
    assert report["extra"]["verdict"]["verdict"] == "regression"
    (comparison,) = report["extra"]["comparisons"]
    assert comparison["confidence"] == pytest.approx(1 - 0.05 / 9)  # each bound at 5 % / 9 looks at most
    assert comparison["cells"][0]["gates"][0]["confidence"] == pytest.approx(1 - 0.05 / 9)
    slow.stdout.fnmatch_lines(["*--llm-repeats auto: * look(s) of at most 9 *; every gated verdict is conclusive"])

    candidate.configure(itl_ms=2)
    same = ab(pytester, llm_fake_server, candidate, "--llm-repeats=auto", "--llm-max-repeats=3",
              "--llm-compare-fail=e2e_p50:0.1%")
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    looks = report["extra"]["repeats_auto"]
    assert looks["max_looks"] == 2 and looks["looks"] <= 2
    assert len(report["cells"]) <= 2 * 3 * 2  # never past 3 repeats a side (and their re-measures)
    if looks["undecided"]:
        assert looks["stopped"].startswith("--llm-max-repeats 3 reached") and looks["looks"] == 2
        assert same.ret == pytest.ExitCode.OK  # inconclusive passes unless --llm-compare-strict
