"""Workloads as users run them: llm_load.conversations / .replay with markers, --llm-workload and
objectives that select turns, a cache state or a workload; a bad workload file fails naming the line."""

from __future__ import annotations

import json

import pytest

from pytest_llmload.testing.fakeserver import FakeServer

TESTS = """
import pytest

@pytest.mark.llm_slo(turns=3, e2e_p95_s=30)
def test_conversations(llm_load):
    cell = llm_load.conversations(users=2, turns=3, prompt_tokens=20, max_tokens=4)
    assert cell.turns == 3 and [t["turn"] for t in cell.extra["turns"]] == [0, 1, 2]
    assert {(r.conversation, r.turn) for r in cell.records} == {(u, t) for u in range(2) for t in range(3)}

def test_replay(llm_load):
    cell = llm_load.replay(speed=4, goodput_ttft_ms=5000)
    assert len(cell.records) == 6 and cell.workload == "trace" and cell.goodput == 1.0
    cell.assert_slo(goodput_min=0.95)

def test_cold(llm_load):
    cell = llm_load(2, 20, 4, cache="uncontrolled")
    assert cell.extra["prefix_cache"]["state"] == "uncontrolled"
"""

TRACE = "".join(json.dumps({"prompt_tokens": 10 + i, "output_tokens": 3, "arrival_s": 0.05 * i}) + "\n"
                for i in range(6))


def run(pytester: pytest.Pytester, server: FakeServer, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--llm-base-url={server.base_url}", "--llm-max-tokens=4",
                                         "-p", "no:cacheprovider", *args)


def test_conversations_replays_and_cache_states_from_tests(pytester: pytest.Pytester,
                                                           llm_fake_server: FakeServer) -> None:
    pytester.makepyfile(TESTS)
    pytester.makefile(".jsonl", trace=TRACE)
    result = run(pytester, llm_fake_server, "--llm-workload=trace.jsonl")
    result.assert_outcomes(passed=3)
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    kinds = [(c["users"], c.get("turns", 1), c.get("workload", ""), c.get("cache", "")) for c in report["cells"]]
    assert kinds == [(2, 3, "", ""), (0, 1, "trace", ""), (2, 1, "", "uncontrolled")]


def test_objectives_select_turns_and_workloads(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makefile(".jsonl", trace=TRACE)
    pytester.makefile(".toml", deploy="""
[[slo]]
name = "chat of three turns"
users = 2
prompt_tokens = 20
turns = 3
ttft_p95_ms = 5000

[[slo]]
name = "trace goodput"
workload = "trace"
goodput_min = 0.95
goodput_ttft_ms = 5000
""")
    result = run(pytester, llm_fake_server, "--llm-slo-file=deploy.toml", "--llm-workload=trace.jsonl",
                 "--llm-workload-speed=4", "-v")
    result.assert_outcomes(passed=2)
    report = json.loads((pytester.path / "llmload-report" / "llmload.json").read_text())
    assert sorted((c.get("turns", 1), c.get("workload", "")) for c in report["cells"]) == [(1, "trace"), (3, "")]


def test_a_bad_workload_file_fails_naming_the_line(pytester: pytest.Pytester, llm_fake_server: FakeServer) -> None:
    pytester.makefile(".jsonl", trace=TRACE + '{"prompt_tokens": 5, "output_tokens": 2, "arrival_s": -3}\n')
    pytester.makepyfile("def test_nothing(): pass")
    result = run(pytester, llm_fake_server, "--llm-workload=trace.jsonl")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-workload*trace.jsonl line 7: arrival_s must be a number of seconds*"])
