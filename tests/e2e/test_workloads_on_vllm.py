"""Workloads on the real vLLM (tiny model, CPU): conversations with TTFT and hit rate by turn, cold vs
warm prefix cache judged by the server's own counters, and a trace replayed open loop on time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmload.load.runner import LoadRunner
from pytest_llmload.load.trace import load_workload
from pytest_llmload.observe.server_metrics import ServerMetricsObserver
from pytest_llmload.results import CellSpec
from pytest_llmload.server.launch import VLLMServer


@pytest.fixture(scope="module")
def runner(tiny_server: VLLMServer) -> Iterator[LoadRunner]:
    observer = ServerMetricsObserver(tiny_server.base_url, poll_interval_s=0)
    with LoadRunner(tiny_server.base_url, tiny_server.model, observers=[observer], progress=False) as r:
        r.run_cell(CellSpec(users=2, prompt_tokens=31, max_tokens=8))  # the first batch after start is slow
        yield r
    observer.close()


def test_a_conversation_hits_the_cache_more_with_every_turn(runner: LoadRunner) -> None:
    cell = runner.run_cell(CellSpec(users=4, prompt_tokens=63, max_tokens=32, turns=4, cache="cold"))
    assert cell.ok, cell.error
    assert cell.extra["prefix_cache"]["state"] == "cold"  # VLLM_SERVER_DEV_MODE on a loopback server
    turns = cell.extra["turns"]
    shares = [t["cached_share"] for t in turns]  # usage.prompt_tokens_details.cached_tokens per request
    assert shares[0] < 0.3 and all(b > a for a, b in zip(shares[1:], shares[2:])) and shares[3] > 0.6, shares
    # Turn 3 prefills only its new message: its TTFT is far below what its whole prompt would cost, and
    # the cell's hit rate from /metrics matches the sum of what each request's usage reported.
    assert cell.prefix_cache_hit_rate == pytest.approx(cell.extra["prefix_cache"]["usage_hit_rate"], abs=0.02)
    assert turns[3]["prompt_tokens_mean"] > 3 * turns[0]["prompt_tokens_mean"]
    print("turns:", json.dumps([{k: t[k] for k in ("turn", "ttft_s", "prompt_tokens_mean", "cached_share")}
                                for t in turns]))


def test_cold_and_warm_cells_differ_as_the_server_counters_say(runner: LoadRunner) -> None:
    spec = CellSpec(users=4, prompt_tokens=480, max_tokens=8)
    cold = runner.run_cell(CellSpec(**{**_fields(spec), "cache": "cold"}))
    warm = runner.run_cell(CellSpec(**{**_fields(spec), "cache": "warm"}))
    assert cold.ok and warm.ok and cold.valid and warm.valid, (cold.invalid_reasons, warm.invalid_reasons)
    assert cold.prefix_cache_hit_rate is not None and cold.prefix_cache_hit_rate < 0.05
    # vLLM caches whole blocks and always computes the last token: on the CPU build (blocks of 128 tokens)
    # a warm 480-token prompt finds 3 blocks, 384 tokens: a hit rate of 0.8.
    assert warm.prefix_cache_hit_rate is not None and warm.prefix_cache_hit_rate >= 0.75
    assert warm.extra["server_metrics"]["counters"]["prefix_cache_queries"] >= 4 * 480
    print("cold", cold.prefix_cache_hit_rate, cold.ttft, "warm", warm.prefix_cache_hit_rate, warm.ttft)


def test_a_trace_replayed_open_loop_starts_on_time_and_matches_it_line_by_line(runner: LoadRunner,
                                                                               tmp_path: Path) -> None:
    lines = [{"prompt_tokens": (31, 63)[i % 2], "output_tokens": 4 + i % 5, "arrival_s": round(0.05 * i, 3)}
             for i in range(60)]
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    cell = runner.run_cell(CellSpec(users=0, prompt_tokens=0, max_tokens=0, mode="open",
                                    workload=load_workload(path), speed=1.0, goodput_ttft_s=5.0))
    assert cell.ok and cell.valid, (cell.error, cell.invalid_reasons)
    assert [r.index for r in cell.records] == list(range(60))
    assert [(r.prompt_tokens, r.output_tokens) for r in cell.records] == [
        (x["prompt_tokens"], x["output_tokens"]) for x in lines]
    late = sorted(r.start - x["arrival_s"] for r, x in zip(cell.records, lines))
    assert late[int(0.99 * (len(late) - 1))] < 0.005, late[-5:]  # the self-check's rule
    assert cell.goodput is not None and cell.goodput > 0.9


def _fields(spec: CellSpec) -> dict[str, Any]:
    return {"users": spec.users, "prompt_tokens": spec.prompt_tokens, "max_tokens": spec.max_tokens}
