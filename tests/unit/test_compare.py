"""Baselines: save/load, gate parsing, and regression verdicts that need both size and significance."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pytest_llmload.gate.compare import compare
from pytest_llmload.report.comparison import render_comparison
from pytest_llmload.report.json_report import load_baseline, save_baseline
from pytest_llmload.vocabulary import parse_gate
from pytest_llmload.errors import BaselineMismatchError, ConfigError, ReportFileError
from pytest_llmload.metrics import cell_stats
from pytest_llmload.results import CellResult, RequestRecord, RunResult

GATES = ("e2e_p95:10%", "ttft_p50:10%", "itl_mean:10%", "tpot_p90:10%", "tokens_per_s_per_user_mean:10%",
         "total_tokens_per_s:10%")


def make_cell(users: int, prompt: int, *, scale: float = 1.0, seed: int = 0, noise: float = 0.05) -> CellResult:
    """`users` requests; every latency multiplied by `scale`; lognormal noise of sigma `noise`."""
    rng = random.Random(seed)
    recs = []
    for i in range(users):
        first = (0.05 + prompt / 5000) * scale * rng.lognormvariate(0, noise)
        total = max((1.5 + users * 0.05) * scale * rng.lognormvariate(0, noise), first + 0.01)
        step = (total - first) / 99
        recs.append(RequestRecord(index=i, start=i * 0.001, end=i * 0.001 + total, first_token=i * 0.001 + first,
                                  chunk_times=tuple(i * 0.001 + first + k * step for k in range(100)),
                                  output_tokens=100))
    return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=True, stats=cell_stats(recs),
                      records=tuple(recs))


def make_run(*, scale: float = 1.0, seed: int = 0, model: str = "Mistral-7B", users=(1, 32, 64)) -> RunResult:
    cells = [make_cell(u, p, scale=scale, seed=seed * 1000 + u + p) for u in users for p in (31, 480)]
    env = {"model": model, "tensor_parallel_size": 1, "dtype": "bfloat16", "gpu_names": ["NVIDIA H100"]}
    return RunResult(environment=env, cells=cells)


# ---------------------------------------------------------------------------------------- save / load
def test_save_and_load_baseline_keeps_records(tmp_path: Path) -> None:
    run = make_run()
    path = save_baseline(run, tmp_path / "base.json")
    assert '"records": [' in path.read_text()  # inline: one file that can be copied around
    back = load_baseline(path)
    assert back.cells == run.cells and back.environment == run.environment


def test_load_baseline_damaged_and_save_refuses_foreign(tmp_path: Path) -> None:
    path = tmp_path / "base.json"
    path.write_text('{"schema_version": 1, "generator": "pytest-llmload", "cells": [')
    with pytest.raises(ReportFileError, match="truncated"):
        load_baseline(path)
    foreign = tmp_path / "pyproject.toml"
    foreign.write_text("[project]\nname = 'x'\n")
    with pytest.raises(ReportFileError, match="refusing to overwrite"):
        save_baseline(make_run(), foreign)
    assert foreign.read_text() == "[project]\nname = 'x'\n"


# ------------------------------------------------------------------------------------------- gates
@pytest.mark.parametrize("text, name, threshold", [
    ("e2e_p95:10%", "e2e_p95", 10.0),
    (" ttft_p50 : 2.5 ", "ttft_p50", 2.5),
    ("tokens_per_s_per_user_mean:5%", "tokens_per_s_per_user_mean", 5.0),
    ("total_tokens_per_s:10%", "total_tokens_per_s", 10.0),
    ("requests_per_s:1%", "requests_per_s", 1.0),
])
def test_parse_gate(text: str, name: str, threshold: float) -> None:
    gate = parse_gate(text)
    assert gate.name == name and gate.threshold_pct == threshold


@pytest.mark.parametrize("text, message", [
    ("e2e_p95", "expected METRIC_STAT:PERCENT"),
    ("e2e_p42:10%", "unknown metric 'e2e_p42'"),
    ("latency_p95:10%", "unknown metric"),
    ("total_tokens_per_s_mean:10%", "unknown metric"),
    ("e2e_p95:ten", "not a number"),
    ("e2e_p95:-5%", "positive"),
    ("e2e_p95:0", "positive"),
    ("e2e_p95:nan%", "positive"),
])
def test_parse_gate_rejects_bad_gates_naming_them(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_gate(text)
    assert repr(text.strip()) in str(info.value) or repr(text) in str(info.value)


# ------------------------------------------------------------------------------------------ verdicts
def test_clear_regression_fails() -> None:
    result = compare(make_run(scale=1.3, seed=1), make_run(), [parse_gate(g) for g in GATES])
    assert result.failed
    big = [c for c in result.cells if c.current.users >= 32]
    assert big and all(g.verdict == "regression" for c in big for g in c.gates)
    e2e = big[0].gates[0]
    assert e2e.ci_low_pct is not None and e2e.ci_low_pct > 10 and e2e.change_pct == pytest.approx(30, abs=8)
    # A single request per cell is no evidence: inconclusive, never regression.
    single = [c for c in result.cells if c.current.users == 1]
    assert all(g.verdict == "inconclusive" and "too few samples" in g.reason for c in single for g in c.gates)
    text = render_comparison(result)
    assert "regression" in text and "+30" in text


@pytest.mark.parametrize("seed", range(1, 6))
def test_noise_is_never_a_regression(seed: int) -> None:
    result = compare(make_run(seed=seed), make_run(), [parse_gate(g) for g in GATES])
    assert not result.failed
    assert {g.verdict for c in result.cells for g in c.gates} <= {"ok", "inconclusive"}


def test_small_change_with_much_noise_is_inconclusive() -> None:
    base = RunResult(environment={"model": "m"}, cells=[make_cell(32, 31, noise=0.4, seed=1)])
    cur = RunResult(environment={"model": "m"}, cells=[make_cell(32, 31, noise=0.4, seed=2, scale=1.12)])
    (cell,) = compare(cur, base, [parse_gate("e2e_p50:10%")]).cells
    assert cell.verdict == "inconclusive"


def test_improvement_and_throughput_direction() -> None:
    result = compare(make_run(scale=0.7, seed=1), make_run(), [parse_gate(g) for g in ["e2e_mean:10%", "tokens_per_s_per_user_mean:10%"]])
    big = [c for c in result.cells if c.current.users >= 32]
    assert all(g.verdict == "improved" for c in big for g in c.gates) and not result.failed
    tok = next(d for d in big[0].deltas if d.metric == "tokens_per_s_per_user")
    assert tok.change_pct is not None and tok.change_pct > 0 and not tok.worse


def test_verdicts_are_deterministic() -> None:
    cur, base, gates = make_run(scale=1.1, seed=3), make_run(), [parse_gate(g) for g in GATES]
    assert render_comparison(compare(cur, base, gates)) == render_comparison(compare(cur, base, gates))


def test_failed_cell_is_a_regression_and_unmatched_cells_are_listed() -> None:
    base, cur = make_run(), make_run(seed=1)
    broken = CellResult(users=64, prompt_tokens=480, max_tokens=100, ok=False, error="server_died")
    cur.cells[-1] = broken
    cur.cells.append(make_cell(128, 31))
    result = compare(cur, base, [parse_gate("e2e_p95:10%")])
    assert result.failed and "server_died" in result.regressions[0][1].reason
    assert [c.users for c in result.only_current] == [128]
    assert "only in this run" in render_comparison(result)


# ------------------------------------------------------------------------------------ layout checks
@pytest.mark.parametrize("field, value", [("model", "Llama-3-70B"), ("tensor_parallel_size", 2),
                                          ("dtype", "float16"), ("gpu_names", ["NVIDIA A100"])])
def test_different_layout_refused_unless_forced(field: str, value: object) -> None:
    cur, base = make_run(), make_run()
    cur.environment[field] = value
    with pytest.raises(BaselineMismatchError, match=f"{field} differs"):
        compare(cur, base, [parse_gate(g) for g in GATES])
    forced = compare(cur, base, [parse_gate(g) for g in GATES], force=True)
    assert forced.mismatches and "WARNING (forced)" in render_comparison(forced)


def test_layout_read_from_server_args() -> None:
    cur, base = make_run(), make_run()
    del cur.environment["tensor_parallel_size"]
    cur.environment["server_args"] = {"tensor_parallel_size": 4}
    with pytest.raises(BaselineMismatchError, match="tensor_parallel_size"):
        compare(cur, base)
