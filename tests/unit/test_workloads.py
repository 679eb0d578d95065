"""Workloads on the fake server: conversations, prefix-cache state and hit rate, reasoning (TTFC),
trace replay (closed and open loop) and goodput; workload files and the ShareGPT converter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_llmload.errors import ConfigError
from pytest_llmload.load.client import stream_once
from pytest_llmload.load.runner import LoadRunner
from pytest_llmload.load.trace import (Workload, WorkloadError, load_workload, main as workload_main,
                                       sample_workload, sharegpt_lines)
from pytest_llmload.objectives import SLO
from pytest_llmload.observe.server_metrics import ServerMetricsObserver
from pytest_llmload.results import CellKey, CellResult, CellSpec, RequestRecord
from pytest_llmload.testing.fakeserver import FakeConfig, FakeServer
from pytest_llmload.vocabulary import goodput_of


def runner_for(server: FakeServer, metrics: bool = False, **kw: Any) -> LoadRunner:
    kw.setdefault("progress", False)
    observers = [ServerMetricsObserver(server.base_url, poll_interval_s=0)] if metrics else []
    return LoadRunner(server.base_url, "fake-model", observers=observers, **kw)


def cache_server(**kw: Any) -> FakeServer:
    return FakeServer(FakeConfig(ttft_ms=5, itl_ms=1, prefix_cache=True, block_tokens=4, **kw))


# --------------------------------------------------------------------------------- conversations


def test_a_conversation_sends_its_history_and_hits_the_cache_more_with_every_turn() -> None:
    with cache_server(prefill_ms_per_token=0.3) as server, runner_for(server, metrics=True) as runner:
        cell = runner.run_cell(CellSpec(users=3, prompt_tokens=40, max_tokens=6, turns=4, cache="cold"))
    assert cell.ok and cell.valid, cell.invalid_reasons
    assert len(cell.records) == 12 and cell.turns == 4 and cell.key.turns == 4
    assert {(r.conversation, r.turn) for r in cell.records} == {(u, t) for u in range(3) for t in range(4)}
    for u in range(3):
        chain = sorted((r for r in cell.records if r.conversation == u), key=lambda r: r.turn or 0)
        assert all(a.end <= b.start for a, b in zip(chain, chain[1:]))
        sizes = [r.prompt_tokens or 0 for r in chain]
        assert sizes[0] == 40 and all(b > a + 40 for a, b in zip(sizes, sizes[1:]))  # history grows
    turns = cell.extra["turns"]
    shares = [t["cached_share"] for t in turns]
    assert shares[0] == 0 and all(b > a for a, b in zip(shares[1:], shares[2:])) and shares[1] > 0.3
    # The cache at work: turn 3 prefills only what is new, far less than its whole prompt would cost.
    assert turns[3]["ttft_s"]["mean"] < 0.005 + 0.0003 * turns[3]["prompt_tokens_mean"] * 0.6
    assert cell.extra["prefix_cache"]["state"] == "cold"
    rate = cell.prefix_cache_hit_rate
    assert rate is not None and 0.3 < rate < 1
    assert rate == pytest.approx(cell.extra["prefix_cache"]["usage_hit_rate"])  # counters == per-request usage


def test_cold_and_warm_differ_as_their_hit_rates_say() -> None:
    with cache_server() as server, runner_for(server, metrics=True) as runner:
        runner.run_cell(CellSpec(users=2, prompt_tokens=64, max_tokens=4))  # fills the cache
        cold = runner.run_cell(CellSpec(users=2, prompt_tokens=64, max_tokens=4, cache="cold"))
        warm = runner.run_cell(CellSpec(users=2, prompt_tokens=64, max_tokens=4, cache="warm"))
    assert cold.prefix_cache_hit_rate == 0 and cold.valid
    assert warm.prefix_cache_hit_rate is not None and warm.prefix_cache_hit_rate > 0.9 and warm.valid
    assert warm.extra["prefix_cache"] == {**warm.extra["prefix_cache"], "asked": "warm", "state": "warm", "warmed": 2}
    assert cold.key != warm.key and "cache=cold" in cold.label


def test_a_cold_cell_on_a_server_that_cannot_reset_is_invalid() -> None:
    with cache_server(dev_mode=False) as server, runner_for(server) as runner:
        cell = runner.run_cell(CellSpec(users=1, prompt_tokens=20, max_tokens=2, cache="cold"))
        free = runner.run_cell(CellSpec(users=1, prompt_tokens=20, max_tokens=2, cache="uncontrolled"))
    assert cell.ok and not cell.valid and "asked cold" in cell.invalid_reasons[0]
    assert "VLLM_SERVER_DEV_MODE" in cell.invalid_reasons[0]
    assert cell.extra["prefix_cache"]["state"] == "uncontrolled"
    assert free.valid and free.extra["prefix_cache"]["state"] == "uncontrolled"


def test_conversations_need_one_round() -> None:
    with cache_server() as server, runner_for(server) as runner:
        cell = runner.run_cell(CellSpec(users=1, prompt_tokens=20, max_tokens=2, turns=2, rounds=2))
    assert not cell.ok and "conversation" in (cell.error or "")


# ------------------------------------------------------------------------------------- reasoning


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_ttfc_is_the_first_answer_token_after_the_reasoning(field: str) -> None:
    with FakeServer(FakeConfig(ttft_ms=10, itl_ms=5, reasoning_tokens=6, reasoning_field=field)) as server:
        with runner_for(server, api="chat") as runner:
            cell = runner.run_cell(CellSpec(users=4, prompt_tokens=30, max_tokens=10))
    assert cell.ok
    for r in cell.records:
        assert r.reasoning_tokens == 6 and r.ttft is not None and r.ttfc is not None
        assert r.ttfc - r.ttft == pytest.approx(6 * 0.005, abs=0.012)
        assert len(r.chunk_times) == 10  # reasoning chunks are tokens too: ITL and TTFT count them
    assert cell.ttfc is not None and cell.ttft is not None and cell.ttfc.p50 > cell.ttft.p50 + 0.02
    assert cell.value("reasoning_tokens", "mean") == 6
    SLO.from_kwargs({"ttfc_p95_ms": 1000, "reasoning_tokens_max": 6}, where="t").check(cell)
    with pytest.raises(AssertionError, match="ttfc p95"):
        SLO.from_kwargs({"ttfc_p95_ms": 1}, where="t").check(cell)


def test_reasoning_counted_by_chunks_without_usage_details_and_ttfc_equals_ttft_without_reasoning() -> None:
    with FakeServer(FakeConfig(ttft_ms=5, itl_ms=1)) as server:
        plain = stream_once(server.base_url, "fake-model", "hello there", 5, api="chat")
        import asyncio

        record = asyncio.run(plain)
    assert record.reasoning_tokens is None and record.ttfc == record.ttft


def test_a_stream_that_only_reasons_has_no_ttfc() -> None:
    record = RequestRecord(index=0, start=0.0, end=1.0, first_token=0.1, reasoning_tokens=9)
    assert record.ttfc is None and record.ttft == 0.1


# --------------------------------------------------------------------------------------- traces


def write_trace(tmp_path: Path, lines: list[dict[str, Any]]) -> Path:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt_tokens": 10}', "line 2: missing output_tokens"),
    ('{"prompt_tokens": 10, "output_tokens": 5, "arrival_s": -1}', "line 2: arrival_s must be"),
    ('{"prompt_tokens": 10, "output_tokens": 5, "speed": 2}', r"line 2: unknown field\(s\) speed"),
    ('{"output_tokens": 5}', "line 2: needs prompt_tokens or prompt"),
    ('{"prompt_tokens": 0, "output_tokens": 5}', "line 2: prompt_tokens must be"),
    ("not json", "line 2: not JSON"),
])
def test_a_bad_workload_line_is_named(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt_tokens": 10, "output_tokens": 5}\n' + line + "\n")
    with pytest.raises(WorkloadError, match=message) as info:
        load_workload(path)
    assert isinstance(info.value, ConfigError) and str(path) in str(info.value)


def test_the_sample_trace() -> None:
    w = sample_workload()
    assert len(w) == 200 and w.timed and w.name == "sample-trace"
    arrivals = w.arrivals(2.0)
    assert arrivals[0] == 0 and 8 < arrivals[-1] < 11
    assert any(len(c) > 1 for c in w.conversations())


def test_open_loop_replay_starts_each_request_on_time_and_matches_the_trace(tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [{"prompt_tokens": 20 + i, "output_tokens": 3 + i % 4, "arrival_s": 0.02 * i,
              **({"conversation_id": "a", "turn": i // 5} if i % 5 == 0 else {})} for i in range(40)]
    workload = load_workload(write_trace(tmp_path, lines))
    with FakeServer(FakeConfig(ttft_ms=5, itl_ms=1)) as server, runner_for(server) as runner:
        cell = runner.run_cell(CellSpec(users=0, prompt_tokens=0, max_tokens=0, mode="open", workload=workload,
                                        speed=2.0, goodput_ttft_s=1.0))
    assert cell.ok and cell.valid, cell.invalid_reasons
    assert [r.index for r in cell.records] == list(range(40))
    for r, line in zip(cell.records, lines):
        assert r.output_tokens == line["output_tokens"] and r.prompt_tokens == line["prompt_tokens"]
        assert r.start - line["arrival_s"] / 2 < 0.02  # late by less than 20 ms
    assert cell.records[5].conversation == 0 and cell.records[5].turn == 1 and cell.records[1].conversation is None
    assert cell.workload == "t" and cell.key.workload == "t" and "workload=t speed=2x" in cell.label
    assert cell.goodput == 1.0 and cell.extra["goodput"]["ttft_ms"] == 1000


def test_closed_loop_replay_gives_a_user_whole_conversations(tmp_path: Path) -> None:
    lines = [{"prompt": f"question {i} " * 3, "output_tokens": 4, "conversation_id": f"c{i % 3}", "turn": i // 3}
             for i in range(9)]
    workload = load_workload(write_trace(tmp_path, lines))
    with FakeServer(FakeConfig(ttft_ms=5, itl_ms=1)) as server, runner_for(server, api="chat") as runner:
        cell = runner.run_cell(CellSpec(users=2, prompt_tokens=0, max_tokens=0, workload=workload))
    assert cell.ok and cell.valid, cell.invalid_reasons
    assert len(cell.records) == 9 and all(r.expected_prompt_tokens is None for r in cell.records)
    for c in range(3):
        chain = sorted((r for r in cell.records if r.conversation == c), key=lambda r: r.turn or 0)
        assert [r.turn for r in chain] == [0, 1, 2] and all(a.end <= b.start for a, b in zip(chain, chain[1:]))


def test_an_open_loop_replay_needs_arrival_times(tmp_path: Path) -> None:
    workload = load_workload(write_trace(tmp_path, [{"prompt_tokens": 5, "output_tokens": 2}]))
    with FakeServer(FakeConfig(ttft_ms=5, itl_ms=1)) as server, runner_for(server) as runner:
        cell = runner.run_cell(CellSpec(users=0, prompt_tokens=0, mode="open", workload=workload))
    assert not cell.ok and "arrival_s" in (cell.error or "")


def test_goodput_counts_failed_and_slow_requests_as_not_good() -> None:
    ok = RequestRecord(index=0, start=0, end=1.0, first_token=0.1, output_tokens=10)
    slow_start = RequestRecord(index=1, start=0, end=1.0, first_token=0.6, output_tokens=10)
    slow_tokens = RequestRecord(index=2, start=0, end=3.0, first_token=0.1, output_tokens=10)
    failed = RequestRecord(index=3, start=0, end=0.1, error="timeout")
    records = [ok, slow_start, slow_tokens, failed]
    assert goodput_of(records, ttft_s=0.5) == 0.5
    assert goodput_of(records, ttft_s=0.5, tpot_s=0.2) == 0.25
    assert goodput_of(records) is None
    cell = CellResult(users=4, prompt_tokens=1, max_tokens=10, ok=True,
                      stats=__import__("dataclasses").replace(
                          __import__("pytest_llmload.metrics", fromlist=["cell_stats"]).cell_stats(records),
                          goodput=0.25), records=tuple(records))
    with pytest.raises(AssertionError, match="goodput: observed 0.25, limit >= 0.95"):
        SLO.from_kwargs({"goodput_min": 0.95, "error_rate_max": 1}, where="t").check(cell)


def test_sharegpt_conversion(tmp_path: Path) -> None:
    data = [{"id": "x", "conversations": [{"from": "human", "value": "hi there"},
                                          {"from": "gpt", "value": "hello " * 10},
                                          {"from": "human", "value": "more"}, {"from": "gpt", "value": "ok"}]},
            {"id": "y", "conversations": [{"from": "gpt", "value": "lonely"}]}]
    assert sharegpt_lines(data, rate=2.0) == [
        {"prompt": "hi there", "output_tokens": 15, "conversation_id": "x", "turn": 0, "arrival_s": 0.0},
        {"prompt": "more", "output_tokens": 1, "conversation_id": "x", "turn": 1, "arrival_s": 0.5}]
    src, out = tmp_path / "in.json", tmp_path / "out.jsonl"
    src.write_text(json.dumps(data))
    assert workload_main(["sharegpt", str(src), str(out)]) == 0
    assert len(load_workload(out)) == 2


# ------------------------------------------------------------------------------------ keys, JSON


def test_old_cells_keep_their_keys_and_new_fields_round_trip() -> None:
    old = {"users": 8, "prompt_tokens": 63, "max_tokens": 100, "mode": "closed", "rate": None, "rounds": 1,
           "ok": True, "stats": None, "records": [{"index": 0, "start": 0.0, "end": 1.0}]}
    cell = CellResult.from_dict(old)
    assert cell.key == CellKey("closed", 8, 63, 100) and cell.label == "users=8 prompt_tokens=63 max_tokens=100"
    assert "turns" not in cell.to_dict() and cell.records[0].conversation is None
    conv = CellResult(users=2, prompt_tokens=10, max_tokens=5, ok=True, turns=4, cache="warm")
    again = CellResult.from_dict(conv.to_dict())
    assert again.key == conv.key and again.key != cell.key and again.label.endswith("turns=4 cache=warm")
    assert CellSpec(users=2, prompt_tokens=10, max_tokens=5, turns=4, cache="warm").key == conv.key


def test_objectives_select_turns_and_cache() -> None:
    slo = SLO.from_kwargs({"turns": 4, "cache": "cold", "prefix_cache_hit_rate_min": 0.5}, where="t")
    yes = CellResult(users=2, prompt_tokens=10, max_tokens=5, ok=True, turns=4, cache="cold")
    no = CellResult(users=2, prompt_tokens=10, max_tokens=5, ok=True)
    assert slo.applies_to(yes) and not slo.applies_to(no)
    assert "turns=4" in slo.title
    with pytest.raises(ConfigError, match="cache"):
        SLO.from_kwargs({"cache": "lukewarm", "e2e_p95_s": 1}, where="t")


def test_workload_arrivals_need_a_positive_speed() -> None:
    w = Workload("w", ())
    with pytest.raises(WorkloadError):
        w.arrivals()


@pytest.mark.parametrize(("host", "dev"), [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                           ("0.0.0.0", False), ("10.1.2.3", False)])
def test_dev_mode_only_for_a_server_on_loopback(tmp_path: Path, host: str, dev: bool) -> None:
    from pytest_llmload.server.spec import ServerSpec, build_argv, server_env

    spec = ServerSpec(model="m", served_model_name="m", host=host, device="cpu")
    env = server_env(spec, tmp_path, base={"VLLM_SERVER_DEV_MODE": "1"})
    assert (env.get("VLLM_SERVER_DEV_MODE") == "1") is dev
    assert "--enable-prompt-tokens-details" in build_argv(spec, 8000)
