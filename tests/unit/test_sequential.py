"""The stopping rule of `--llm-repeats auto`: looks after every interleaved block, each spending an equal
share of the 5 % (gate/sequential.py), shown by simulation to keep false alarms within 5 % over all looks."""

from __future__ import annotations

import random

import pytest

from pytest_llmload.gate.compare import RepeatValue, judge
from pytest_llmload.gate.sequential import judge_look, look_alpha, look_confidence, next_look
from pytest_llmload.results import CellResult
from pytest_llmload.vocabulary import parse_gate

from factories import repeated_run

GATE = parse_gate("e2e_p50:5%")
MAX_LOOKS = 8  # 2 to 9 repeats a side


def test_each_look_spends_an_equal_share() -> None:
    assert look_alpha(8) == pytest.approx(0.05 / 8) and look_confidence(1) == pytest.approx(0.95)
    with pytest.raises(ValueError):
        look_alpha(0)


def _session(factor: float, sigma: float, rng: random.Random, sequential: bool) -> tuple[str, int]:
    """One A/B session that stops at its first conclusive look: (verdict, looks taken). `sequential`
    False: every look at 95 %, as a naive loop would."""
    a: list[RepeatValue] = []
    b: list[RepeatValue] = []
    for look in range(1, MAX_LOOKS + 1):
        while len(a) < look + 1:  # one interleaved block: a repeat more a side
            b.append(RepeatValue(0.6 * factor * rng.lognormvariate(0, sigma), True))
            a.append(RepeatValue(0.6 * rng.lognormvariate(0, sigma), True))
        if sequential:
            decision = judge_look(b, a, GATE, look, MAX_LOOKS)
            if decision.stop:
                return decision.verdict, look
        else:
            verdict = judge(GATE, b, a).verdict
            if verdict != "inconclusive" or look == MAX_LOOKS:
                return verdict, look
    raise AssertionError("the last look always stops")


def _rates(factor: float, sequential: bool, sessions: int = 300, sigma: float = 0.05) -> tuple[float, float]:
    """(share of sessions that stopped on "regression", mean looks taken)."""
    rng = random.Random(19)
    runs = [_session(factor, sigma, rng, sequential) for _ in range(sessions)]
    return sum(v == "regression" for v, _ in runs) / sessions, sum(n for _, n in runs) / sessions


def test_false_alarms_stay_within_five_percent_over_all_looks_and_real_changes_are_found() -> None:
    """Per-repeat sigma 0.05 (A/B, sides taking turns), gate e2e_p50:5 %, at most 8 looks. The worst case
    for a false alarm is a change exactly at the threshold: looking 8 times at 95 % calls it a regression
    in about 12 % of sessions; spending 5 %/8 a look keeps it under 5 % (2 %). An unchanged server is
    never one; a 20 % change is found in nearly every session, after 3.5 looks on average, a doubled
    latency at the first or second look."""
    naive, _ = _rates(1.05, sequential=False)
    assert naive > 0.08  # the simulation can tell a rule that does not hold its rate
    at_threshold, _ = _rates(1.05, sequential=True)
    assert at_threshold <= 0.05
    unchanged, _ = _rates(1.0, sequential=True)
    assert unchanged <= 0.01
    twenty, looks = _rates(1.2, sequential=True)
    assert twenty >= 0.95 and looks < 4.5  # about 4.5 repeats a side
    doubled, looks = _rates(2.0, sequential=True)
    assert doubled == 1.0 and looks < 2


def test_a_look_continues_while_inconclusive_and_reports_the_look_confidence() -> None:
    noisy = [RepeatValue(v, True) for v in (0.6, 0.8, 0.5)]
    other = [RepeatValue(v, True) for v in (0.8, 0.55, 0.66)]
    first = judge_look(noisy, other, GATE, 1, MAX_LOOKS)
    assert not first.stop and first.verdict == "inconclusive" and "look 1 of 8" in first.reason
    assert first.result.confidence == pytest.approx(1 - 0.05 / 8)
    last = judge_look(noisy, other, GATE, MAX_LOOKS, MAX_LOOKS)
    assert last.stop and not last.conclusive and "the repeats are spent" in last.reason
    with pytest.raises(ValueError):
        judge_look(noisy, other, GATE, 9, MAX_LOOKS)


def test_next_look_on_cells_stops_on_failures_and_against_a_baseline() -> None:
    base = repeated_run({(32, 63): [0.94, 1.10, 0.85]})
    slow = repeated_run({(32, 63): [2.6, 2.9, 2.4]}, seed=1)
    decision = next_look(slow.cells, base.cells, GATE, 2, MAX_LOOKS, sides=("in B", "in A"))
    assert decision.stop and decision.conclusive and decision.verdict == "regression"
    failed = [CellResult(users=32, prompt_tokens=63, max_tokens=100, ok=False, error="server_died")] * 2
    both = next_look(failed, failed, GATE, 1, MAX_LOOKS)
    assert both.stop and both.verdict == "invalid" and "failed on both sides" in both.result.reason
    same = repeated_run({(32, 63): [0.95, 1.12, 0.86]}, seed=2)
    against_baseline = next_look(same.cells, base.cells, GATE, 1, MAX_LOOKS, by_session=True)
    assert against_baseline.verdict == "inconclusive" and against_baseline.stop is False  # one session: no interval
