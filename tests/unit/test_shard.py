"""Sharding a cell over load workers and merging their records back: pure functions, no server."""

from __future__ import annotations

import pickle
import random

import pytest

from factories import record
from pytest_llmload.load.client import Endpoint
from pytest_llmload.load.selfcheck import ClientCheck, judge, judge_cell
from pytest_llmload.load.shard import (
    MergedCell,
    ShardJob,
    ShardOutcome,
    barrier_skew,
    client_section,
    merge_outcomes,
    plan_shards,
    together_spread,
)
from pytest_llmload.load.workload import Prompt
from pytest_llmload.metrics import cell_stats
from pytest_llmload.results import CellSpec, RequestRecord
from pytest_llmload.vocabulary import percentile

ENDPOINT = Endpoint.from_url("http://127.0.0.1:9")


def plan(spec: CellSpec, workers: int, arrivals: list[float] | None = None) -> list[ShardJob]:
    n = len(arrivals) if arrivals is not None else spec.users * spec.rounds
    prompts = [Prompt(f"prompt {i}", 10 + i) for i in range(n)]
    return plan_shards(spec, prompts, arrivals, workers, endpoint=ENDPOINT, api="completions", model="m",
                       request_timeout_s=5.0)


def check(**changes: object) -> ClientCheck:
    values: dict[str, object] = dict(wall_s=1.0, cpu_s=0.2, runqueue_wait_s=0.0, max_loop_lag_s=0.004,
                                     heartbeats=200, start_spread_s=0.001, cpus=(1,))
    values.update(changes)
    return ClientCheck(**values)  # type: ignore[arg-type]


def outcome(worker: int, records: list[RequestRecord], *, first: float | None = 0.0, unix: int = 10**18,
            **check_changes: object) -> ShardOutcome:
    return ShardOutcome(worker, tuple(records), 100.0, unix, check(**check_changes), first, False, 1000 + worker, "h")


# ---- sharding ------------------------------------------------------------------------------------------
def test_closed_loop_users_are_dealt_round_robin_with_all_their_rounds() -> None:
    spec = CellSpec(users=10, prompt_tokens=16, rounds=3)
    jobs = plan(spec, 4)
    assert [j.users for j in jobs] == [(0, 4, 8), (1, 5, 9), (2, 6), (3, 7)]
    indices = [i for j in jobs for i in j.indices]
    assert sorted(indices) == list(range(30))  # every request of the cell exactly once
    for job in jobs:
        assert sorted(job.prompts) == sorted(job.indices) and job.requests == len(job.indices)
        for u in job.users:  # a user's rounds stay together: they run one after another
            assert {r * 10 + u for r in range(3)} <= set(job.indices)
        assert all(job.prompts[i] == Prompt(f"prompt {i}", 10 + i) for i in job.indices)


def test_fewer_users_than_workers_use_fewer_workers() -> None:
    jobs = plan(CellSpec(users=3, prompt_tokens=16), 8)
    assert [(j.worker, j.users) for j in jobs] == [(0, (0,)), (1, (1,)), (2, (2,))]
    with pytest.raises(ValueError):
        plan(CellSpec(users=3, prompt_tokens=16), 0)


def test_an_open_loop_schedule_is_dealt_in_arrival_order() -> None:
    arrivals = [0.01 * i for i in range(10)]
    jobs = plan(CellSpec(users=0, prompt_tokens=16, mode="open", rate=100, duration_s=0.1), 3, arrivals)
    assert [[i for i, _ in j.arrivals] for j in jobs] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert all(at == arrivals[i] for j in jobs for i, at in j.arrivals)
    assert sorted(i for j in jobs for i in j.indices) == list(range(10))


def test_jobs_and_outcomes_cross_process_boundaries() -> None:
    job = plan(CellSpec(users=2, prompt_tokens=16), 2)[1]
    assert pickle.loads(pickle.dumps(job)) == job
    out = outcome(0, [record(0)])
    assert pickle.loads(pickle.dumps(out)) == out


# ---- merging -------------------------------------------------------------------------------------------
def test_merged_statistics_are_those_of_all_records_not_a_percentile_of_percentiles() -> None:
    rng = random.Random(5)
    fast = [record(i, ttft=rng.uniform(0.05, 0.1), itl=0.01) for i in range(0, 300, 2)]
    slow = [record(i, ttft=rng.uniform(0.5, 2.0), itl=0.03) for i in range(1, 300, 2)]
    spec = CellSpec(users=300, prompt_tokens=16)
    merged = merge_outcomes([outcome(1, slow), outcome(0, fast)], spec, None, 300)
    assert [r.index for r in merged.records] == list(range(300))
    assert [o.worker for o in merged.outcomes] == [0, 1]
    stats = cell_stats(merged.records)
    e2es = sorted(r.e2e for r in fast + slow)
    assert stats.e2e is not None and stats.e2e.p95 == percentile(e2es, 95) and stats.e2e.count == 300
    assert stats.ttft is not None and stats.ttft.p50 == percentile(sorted(r.ttft for r in fast + slow), 50)  # type: ignore[misc]
    assert stats.itl is not None and stats.itl.count == 300 * 99  # every gap of every request, pooled
    per_shard = [cell_stats(fast).e2e, cell_stats(slow).e2e]
    assert stats.e2e.p95 != sum(d.p95 for d in per_shard if d) / 2  # what averaging would have claimed


@pytest.mark.parametrize(("indices", "message"), [
    ([0, 1, 3], "missing [2]"),
    ([0, 1, 1, 2, 3], "recorded twice [1]"),
])
def test_a_missing_or_doubled_request_is_an_error(indices: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        merge_outcomes([outcome(0, [record(i) for i in indices])], CellSpec(users=4, prompt_tokens=16), None, 4)


def test_the_start_spread_spans_all_workers_first_round_only() -> None:
    spec = CellSpec(users=2, prompt_tokens=16, rounds=2)
    recs = [record(0, start=0.001), record(1, start=0.004), record(2, start=3.0), record(3, start=2.5)]
    assert together_spread(recs, spec, None) == pytest.approx(0.003)
    merged = merge_outcomes([outcome(0, recs[::2]), outcome(1, recs[1::2])], spec, None, 4)
    assert merged.start_spread_s == pytest.approx(0.003)


def test_the_open_loop_spread_is_the_latest_start_against_its_schedule() -> None:
    spec = CellSpec(users=0, prompt_tokens=16, mode="open", rate=10, duration_s=0.3)
    recs = [record(0, start=0.0005), record(1, start=0.112), record(2, start=0.2001)]
    assert together_spread(recs, spec, [0.0, 0.1, 0.2]) == pytest.approx(0.012)
    assert together_spread(recs, spec, {0: 0.0, 1: 0.1, 2: 0.2}) == pytest.approx(0.012)


def test_the_barrier_skew_compares_first_writes_on_the_coordinators_clock() -> None:
    a = outcome(0, [record(0)], first=0.001, unix=10**18)
    b = outcome(1, [record(1)], first=0.002, unix=10**18 + 30_000_000)  # its clock runs 30 ms ahead
    assert barrier_skew([a, b], {}) == pytest.approx(0.031)
    assert barrier_skew([a, b], {1: 30_000_000}) == pytest.approx(0.001)
    assert barrier_skew([a], {}) is None and barrier_skew([a, outcome(1, [], first=None)], {}) is None


# ---- the client section and the verdict ---------------------------------------------------------------
def test_one_in_process_worker_reports_its_check_as_before() -> None:
    merged = MergedCell((record(0),), (outcome(0, [record(0)]),), 0.002, None)
    section = client_section(merged, {"backend": "in-process"}, None)
    assert section == {**check().to_dict(), "start_spread_s": 0.002}


def test_several_workers_report_the_worst_figures_and_each_check() -> None:
    outs = (outcome(0, [record(0)], max_loop_lag_s=0.002, cpu_s=0.3, cpus=(2,)),
            outcome(1, [record(1), record(2)], max_loop_lag_s=0.009, cpu_s=0.5, runqueue_wait_s=None, cpus=(3,)))
    section = client_section(MergedCell((), outs, 0.004, 0.001), {"backend": "processes"}, None)
    assert section["backend"] == "processes" and section["max_loop_lag_s"] == 0.009
    assert section["cpu_s"] == pytest.approx(0.8) and section["busy"] == pytest.approx(0.5)
    assert section["runqueue_wait_s"] is None and section["cpus"] == [2, 3]
    assert section["start_spread_s"] == 0.004 and section["barrier_skew_s"] == 0.001
    assert [(w["worker"], w["requests"], w["cpus"]) for w in section["workers"]] == [(0, 1, [2]), (1, 2, [3])]


def test_a_cell_is_invalid_when_any_worker_is() -> None:
    good, stalled = check(), check(max_loop_lag_s=0.3)
    assert judge_cell([good, good], 0.001, 0.5) == ()
    [reason] = judge_cell([good, stalled], 0.001, 0.5)
    assert reason.startswith("load worker 1: the measuring event loop stalled for 300 ms")
    assert judge_cell([stalled], 0.001, 0.5) == judge(stalled, 0.5)  # one worker: the reasons as always


def test_workers_sharing_a_core_saturate_it_together() -> None:
    half = check(cpu_s=0.5, cpus=(1,))  # each loop alone: 50 % busy, below the limit
    [reason] = judge_cell([half, half], 0.001, 0.5)
    assert reason.startswith("load workers 0, 1 share CPU(s) 1 and kept them 100% busy (> 90%)")
    assert judge_cell([half, check(cpu_s=0.5, cpus=(2,))], 0.001, 0.5) == ()  # a core each
    assert judge_cell([check(cpu_s=0.5, cpus=(0, 1)), check(cpu_s=0.5, cpus=(0, 1))], 0.001, 0.5) == ()


def test_the_barrier_skew_and_clock_uncertainty_count_in_the_verdict() -> None:
    reasons = judge_cell([check(), check()], 0.001, 0.5, barrier_skew_s=0.08, clock_uncertainty_s=0.07)
    assert "their first writes lay 80 ms apart on one clock (> 50 ms)" in reasons[0]
    assert "clocks are known only to within 70 ms" in reasons[1]
    assert judge_cell([check(), check()], 0.001, 0.5, barrier_skew_s=0.02, clock_uncertainty_s=0.001) == ()
