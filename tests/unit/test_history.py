"""The SQLite history: one transaction per session, concurrent writers, invalid repeats kept, the trend,
and the last sessions of the same deployment as a baseline."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from pytest_llmload.errors import ReportFileError
from pytest_llmload.gate.compare import compare
from pytest_llmload.report.history import (append_session, load_history_baseline, sessions, split_spec, trend,
                                           trend_metrics)
from pytest_llmload.report.html import render_html
from pytest_llmload.report.json_report import load_baseline
from pytest_llmload.results import RunResult
from pytest_llmload.vocabulary import parse_gate

from factories import cell

ENV = {"model": "tiny", "served_model_name": "tiny", "cpu_model": "Xeon", "cpu_count": 2, "vllm_version": "0.32.0"}


def _run(e2e_itl: float = 0.02, *, env: dict[str, Any] | None = None, invalid: bool = False, interrupted: bool = False) -> RunResult:
    cells = []
    for repeat in range(3):
        for users in (4, 8):
            c = cell(users, 63, itl=e2e_itl * (1 + 0.01 * repeat), tokens=16)
            if invalid and repeat == 1:
                c = dataclasses.replace(c, valid=False, invalid_reasons=("start spread 1 s",))
            cells.append(c)
    return RunResult(environment=dict(env or ENV), cells=cells, interrupted=interrupted)


def test_a_session_is_appended_with_every_repeat_and_invalid_ones_marked(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    sid = append_session(path, _run(invalid=True), label="main")
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT cell, repeat, valid, invalid_reasons FROM repeats WHERE session_id=?", (sid,)).fetchall()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(rows) == 6
    assert ("users=4 prompt_tokens=63 max_tokens=16", 2, 0, '["start spread 1 s"]') in rows
    (s,) = sessions(path)
    assert s.label == "main" and not s.interrupted and s.vllm_version == "0.32.0"


def test_an_interrupted_session_is_marked_and_not_a_baseline(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    append_session(path, _run(), label="main")
    append_session(path, _run(interrupted=True), label="main")
    assert [s.interrupted for s in sessions(path)] == [False, True]
    base = load_history_baseline(path, label="main", like=ENV)
    assert base.extra["sessions"][0]["history_id"] == 1 and len(base.extra["sessions"]) == 1


def _writer(args: tuple[str, int]) -> int:
    path, i = args
    return append_session(path, _run(0.02 + i * 0.001), label=f"w{i}")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite")
    append_session(path, _run())  # the schema exists before the race
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_writer, [(path, i) for i in range(8)])
    assert len(set(ids)) == 8
    assert len(sessions(path)) == 9
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM repeats").fetchone()[0] == 9 * 6


def test_the_baseline_is_the_last_sessions_of_the_same_deployment_and_label(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    for i in range(12):
        append_session(path, _run(0.02 + 0.001 * i), label="main")
    append_session(path, _run(), label="pr")
    append_session(path, _run(env={**ENV, "model": "other"}), label="main")
    append_session(path, dataclasses.replace(_run(), extra={"comparisons": [{"failed": True}]}), label="main")
    base = load_baseline(f"{path}:main", like=ENV)
    assert [s["history_id"] for s in base.extra["sessions"]] == list(range(3, 13))
    assert {c.extra["baseline_session"] for c in base.cells} == set(range(10))
    comparison = compare(_run(0.02), base, [parse_gate("e2e_p50:10%")])
    assert {c.verdict for c in comparison.cells} <= {"ok", "improved", "inconclusive"}
    assert comparison.cells[0].gates[0].ci_low_pct is not None  # 10 sessions: a real prediction interval
    worse = compare(_run(0.06), base, [parse_gate("e2e_p50:10%")])
    assert {c.verdict for c in worse.cells} == {"regression"}
    with pytest.raises(ReportFileError, match="no session labelled 'nightly'"):
        load_baseline(f"{path}:nightly", like=ENV)


def test_spec_and_foreign_files(tmp_path: Path) -> None:
    assert split_spec("h.sqlite:main") == (Path("h.sqlite"), "main")
    assert split_spec("h.sqlite") == (Path("h.sqlite"), None)
    assert split_spec("base.json") is None
    (tmp_path / "x.sqlite").write_text("not a database")
    with pytest.raises(ReportFileError, match="not an SQLite history"):
        append_session(tmp_path / "x.sqlite", _run())


def test_the_trend_shows_both_sessions_this_one_marked_and_the_band(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    first = append_session(path, _run(0.02, env={**ENV, "vllm_version": "0.31.0"}))
    run = _run(0.021)
    base = load_history_baseline(path, like=ENV)
    second = append_session(path, run)
    metrics = trend_metrics(["e2e_p95:10%", "startup:20%"], ["ttft_p99_ms", "error_rate_max"])
    assert metrics == ["e2e_p50", "e2e_p95", "ttft_p99"]
    doc = trend(path, run, session_id=second, metrics=metrics, baseline=base)
    assert [s["id"] for s in doc["sessions"]] == [first, second] and doc["current"] == 1
    cell4 = doc["cells"][0]
    assert cell4["cell"] == "users=4 prompt_tokens=63 max_tokens=16"
    assert [p["session"] for p in cell4["series"]["e2e_p50"]] == [0, 1]
    lo, hi = cell4["band"]["e2e_p50"]
    assert 0 < lo <= hi
    run.extra["history"] = doc
    html = render_html(run)
    assert 'id="trend-e2e_p50"' in html and "data:image/png;base64" in html and "0.31.0" in html
