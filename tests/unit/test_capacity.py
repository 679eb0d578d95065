"""The capacity search: doubling then bisecting, and never flipping on noise."""

from __future__ import annotations

import pytest

from factories import cell
from pytest_llmload.gate.capacity import Inconclusive, find_max_users
from pytest_llmload.errors import SLOViolation
from pytest_llmload.results import CellResult
from pytest_llmload.objectives import SLO

SLO_2S = SLO.from_kwargs({"e2e_p50_s": 2.0}, where="t")


def linear_server(calls: list[int], base: float = 0.99, per_user: float = 0.05):
    """E2E grows linearly with users: users <= (2 - base) / per_user meet a 2 s objective."""

    def run(users: int) -> CellResult:
        calls.append(users)
        e2e = base + per_user * users
        return cell(users=users, ttft=0.01, itl=(e2e - 0.01) / 99)

    return run


def test_doubles_then_bisects_to_the_exact_answer() -> None:
    calls: list[int] = []
    result = find_max_users(linear_server(calls), SLO_2S, prompt_tokens=31, margin=0.0)
    assert result.max_users == 20 and result.first_fail == 21
    assert calls[:6] == [1, 2, 4, 8, 16, 32]
    assert len(calls) <= 6 + 4  # doubling, then at most log2(16) bisection steps
    result.assert_at_least(20)
    with pytest.raises(SLOViolation, match="expected at least 32 users, measured 20"):
        result.assert_at_least(32)


def test_stops_at_the_limit_when_everything_passes() -> None:
    result = find_max_users(linear_server([], per_user=0.001), SLO_2S, prompt_tokens=31, limit=100)
    assert result.max_users == 100 and result.first_fail is None


def test_a_probe_close_to_the_limit_is_repeated_and_then_inconclusive() -> None:
    calls: list[int] = []
    # From 19 users on, E2E is within 5 % of the 2 s limit: such probes are repeated and stay too close.
    result = find_max_users(linear_server(calls), SLO_2S, prompt_tokens=31, margin=0.05, repeats=2)
    close = [p for p in result.probes if p.verdict == "inconclusive"]
    assert close and all(len(p.cells) == 3 for p in close)
    assert result.max_users == 18 and set(result.inconclusive) <= {19, 20, 21, 22}
    with pytest.raises(Inconclusive):
        result.assert_at_least(20)
    with pytest.raises(SLOViolation):
        result.assert_at_least(32)  # 32 users are conclusively over the limit


def test_noise_never_turns_a_miss_into_a_pass() -> None:
    import random

    answers = set()
    for seed in range(5):
        rng = random.Random(seed)

        def noisy(users: int) -> CellResult:
            e2e = (1.0 + 0.05 * users) * rng.uniform(0.98, 1.02)
            return cell(users=users, ttft=0.01, itl=(e2e - 0.01) / 99)

        answers.add(find_max_users(noisy, SLO_2S, prompt_tokens=31, margin=0.05).max_users)
    # True capacity is 20 (E2E 1.99 s). With +-2 % noise and no margin, runs would report 20 or 21 by
    # chance; with the margin a probe within 5 % of the limit is never called a pass, so every run
    # reports a capacity the server really holds, never one it does not.
    assert answers and max(answers) <= 20 and min(answers) >= 17, answers


def test_a_failing_cell_is_a_miss() -> None:
    result = find_max_users(lambda u: cell(users=u, itl=0.01, failed=u if u >= 8 else 0), SLO_2S, prompt_tokens=31)
    assert result.max_users == 7 and result.first_fail == 8


def test_an_invalid_probe_is_measured_again_and_never_counts_as_a_pass() -> None:
    import dataclasses

    slo = SLO.from_kwargs({"e2e_p95_s": 100}, where="test")
    runs: list[int] = []

    def run_cell(users: int) -> CellResult:
        runs.append(users)
        good = cell(users=users)
        disturbed = users == 4 and runs.count(4) == 1  # the first probe at 4 users was disturbed
        return dataclasses.replace(good, valid=False, invalid_reasons=("stall",)) if disturbed else good

    result = find_max_users(run_cell, slo, prompt_tokens=31, limit=8)
    assert runs.count(4) == 2 and result.max_users == 8
    always_bad = find_max_users(lambda u: dataclasses.replace(cell(users=u), valid=False, invalid_reasons=("x",)),
                                slo, prompt_tokens=31, limit=8, repeats=1)
    assert always_bad.max_users == 0 and always_bad.inconclusive == (1,) and always_bad.first_fail is None
