"""`--llm-history PATH`: a SQLite file every session appends to, the trend over it, and a baseline from it.

Tables (stdlib sqlite3, WAL; SCHEMA_VERSION in `meta`)::

    sessions  id, finished_utc, label, interrupted, gate_failed, model, vllm_version, git_commit,
              environment (JSON), extra (JSON: server starts)
    repeats   session_id, cell (key), users, prompt_tokens, max_tokens, rounds, mode, rate, repeat, ok, valid,
              error, invalid_reasons (JSON), stats (JSON: CellStats.to_dict)
    verdicts  session_id, kind, baseline, cell, gate, verdict, change_pct, ci_low_pct, ci_high_pct, reason

A session is appended in one transaction (`BEGIN IMMEDIATE`, so two sessions that finish together
queue for the lock instead of losing a write), invalid repeats marked, never dropped; an interrupted
session appends what it measured, marked interrupted.

"The same deployment" is decided as everywhere (`gate/provenance.differences`, deployment facts):
the trend and the baseline from the history only use sessions whose environment does not differ from
this one's in the deployment. A history baseline (`--llm-baseline history.sqlite[:label]`) is the last
`BASELINE_SESSIONS` such sessions (of that label), leaving out interrupted sessions and sessions whose
gate failed (a session that regressed is no reference, as for baseline files).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ReportFileError
from ..gate.compare import SESSION_KEY, repeats_by_key
from ..gate.provenance import differences
from ..gate.stats import t_quantile
from ..results import CellResult, CellStats, RunResult
from ..vocabulary import parse_gate

SCHEMA_VERSION = 1
BASELINE_SESSIONS = 10
TREND_KEY = "history"  # RunResult.extra: the trend report.html draws
SUFFIXES = (".sqlite", ".sqlite3", ".db")
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, finished_utc TEXT, label TEXT, interrupted INTEGER NOT NULL,
    gate_failed INTEGER NOT NULL, model TEXT, vllm_version TEXT, git_commit TEXT,
    environment TEXT NOT NULL, extra TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS repeats (
    session_id INTEGER NOT NULL REFERENCES sessions(id), cell TEXT NOT NULL, users INTEGER, prompt_tokens INTEGER,
    max_tokens INTEGER, rounds INTEGER NOT NULL, mode TEXT, rate REAL, repeat INTEGER NOT NULL, ok INTEGER NOT NULL, valid INTEGER NOT NULL,
    error TEXT, invalid_reasons TEXT NOT NULL, stats TEXT, PRIMARY KEY (session_id, cell, repeat));
CREATE TABLE IF NOT EXISTS verdicts (
    session_id INTEGER NOT NULL REFERENCES sessions(id), kind TEXT, baseline TEXT, cell TEXT, gate TEXT,
    verdict TEXT, change_pct REAL, ci_low_pct REAL, ci_high_pct REAL, reason TEXT);
CREATE INDEX IF NOT EXISTS sessions_model ON sessions(model);
"""


def split_spec(spec: str) -> tuple[Path, str | None] | None:
    """`history.sqlite[:label]` -> (path, label); None when `spec` names no history file."""
    path, sep, label = spec.rpartition(":")
    for candidate, lab in ((spec, None), (path, label or None) if sep else (spec, None)):
        p = Path(candidate)
        if p.suffix in SUFFIXES or (p.is_file() and _is_sqlite(p)):
            return p, lab
    return None


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _connect(path: Path | str) -> sqlite3.Connection:
    path = Path(path)
    if path.exists() and not _is_sqlite(path) and path.stat().st_size > 0:
        raise ReportFileError(path, "exists and is not an SQLite history; refusing to use it")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    if version != str(SCHEMA_VERSION):
        conn.close()
        raise ReportFileError(path, f"history schema_version {version} is not supported (this reads {SCHEMA_VERSION})")
    return conn


# ------------------------------------------------------------------------------------------ writing


def cell_key(cell: CellResult) -> str:
    """The cell a repeat belongs to, as stored: its `CellKey`'s label."""
    return cell.key.label


def append_session(path: Path | str, run: RunResult, *, label: str | None = None,
                   gate_failed: bool | None = None) -> int:
    """Append `run` (its provenance, every repeat of every cell, the verdicts of `run.extra["comparisons"]`)
    in one transaction; the new session's id. `gate_failed` None: a comparison in the run failed."""
    comparisons = [c for c in run.extra.get("comparisons") or [] if isinstance(c, dict)]
    if gate_failed is None:
        gate_failed = any(c.get("failed") for c in comparisons)
    env = run.environment
    extra = {k: run.extra[k] for k in ("server_starts",) if k in run.extra}
    with closing(_connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                "INSERT INTO sessions (finished_utc, label, interrupted, gate_failed, model, vllm_version, git_commit,"
                " environment, extra) VALUES (strftime('%Y-%m-%dT%H:%M:%SZ','now'), ?, ?, ?, ?, ?, ?, ?, ?)",
                (label, int(run.interrupted), int(gate_failed), _model(env), env.get("vllm_version"),
                 env.get("git_commit"), _dumps(env), _dumps(extra)))
            sid = int(cur.lastrowid or 0)
            conn.executemany("INSERT INTO repeats VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             [_repeat_row(sid, c, i) for cells in repeats_by_key(run).values()
                              for i, c in enumerate(cells, start=1)])
            conn.executemany("INSERT INTO verdicts VALUES (?,?,?,?,?,?,?,?,?,?)",
                             [(sid, c.get("kind"), c.get("baseline_name"), cell.get("label"), g.get("gate"),
                               g.get("verdict"), g.get("change_pct"), g.get("ci_low_pct"), g.get("ci_high_pct"),
                               g.get("reason"))
                              for c in comparisons for cell in c.get("cells") or [] for g in cell.get("gates") or []])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return sid


def _model(env: dict[str, Any]) -> str | None:
    value = env.get("served_model_name") or env.get("model")
    return None if value is None else str(value)


def _dumps(value: Any) -> str:
    from .json_report import dumps  # noqa: PLC0415

    return dumps(value, indent=None)


def _repeat_row(sid: int, c: CellResult, repeat: int) -> tuple[Any, ...]:
    return (sid, cell_key(c), c.users, c.prompt_tokens, c.max_tokens, c.rounds, c.mode, c.rate, repeat, int(c.ok), int(c.valid),
            c.error, json.dumps(list(c.invalid_reasons)), None if c.stats is None else _dumps(c.stats.to_dict()))


# ------------------------------------------------------------------------------------------ reading


@dataclass(frozen=True, slots=True)
class Session:
    """One stored session (without its repeats)."""

    id: int
    finished_utc: str
    label: str | None
    interrupted: bool
    gate_failed: bool
    vllm_version: str | None
    environment: dict[str, Any]
    extra: dict[str, Any]


def sessions(path: Path | str, *, like: dict[str, Any] | None = None, label: str | None = None) -> list[Session]:
    """Stored sessions, oldest first: of the same deployment as the environment `like` (when given), of
    `label` (when given)."""
    with closing(_connect(path)) as conn:
        rows = conn.execute("SELECT id, finished_utc, label, interrupted, gate_failed, vllm_version, environment, extra"
                            " FROM sessions ORDER BY id").fetchall()
    out = [Session(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5], json.loads(r[6]), json.loads(r[7])) for r in rows]
    if label is not None:
        out = [s for s in out if s.label == label]
    if like is not None:
        out = [s for s in out if not any(d.deployment for d in differences(like, s.environment))]
    return out


def _cells(path: Path | str, ids: Sequence[int]) -> dict[int, list[CellResult]]:
    if not ids:
        return {}
    with closing(_connect(path)) as conn:
        rows = conn.execute(f"SELECT session_id, users, prompt_tokens, max_tokens, rounds, mode, rate, ok, valid, error, "
                            f"invalid_reasons, stats FROM repeats WHERE session_id IN ({','.join('?' * len(ids))}) "
                            f"ORDER BY session_id, cell, repeat", list(ids)).fetchall()
    out: dict[int, list[CellResult]] = {}
    for sid, users, prompt, max_tokens, rounds, mode, rate, ok, valid, error, reasons, stats in rows:
        out.setdefault(sid, []).append(CellResult(
            users=users, prompt_tokens=prompt, max_tokens=max_tokens, rounds=rounds, mode=mode, rate=rate, ok=bool(ok),
            valid=bool(valid), error=error, invalid_reasons=tuple(json.loads(reasons)),
            stats=None if stats is None else CellStats.from_dict(json.loads(stats))))
    return out


def load_history_baseline(path: Path | str, *, label: str | None = None, like: dict[str, Any] | None = None,
                          keep: int = BASELINE_SESSIONS) -> RunResult:
    """The last `keep` usable sessions of the history as a baseline (one baseline session each). `like`:
    this session's environment (else the newest session's deployment is taken). ReportFileError when
    there is none."""
    path = Path(path)
    if not path.exists():
        raise ReportFileError(path, "no such history file")
    every = sessions(path, label=label)
    if like is None and every:
        like = every[-1].environment
    usable = [s for s in sessions(path, label=label, like=like) if not s.interrupted and not s.gate_failed][-keep:]
    if not usable:
        what = f" labelled {label!r}" if label else ""
        raise ReportFileError(path, f"holds no session{what} of this deployment that was complete and passed its gate "
                                    f"({len(every)} session(s){what} in all)")
    cells = _cells(path, [s.id for s in usable])
    run = RunResult(environment=dict(usable[-1].environment))
    for i, s in enumerate(usable):
        run.cells += [_tag(c, i) for c in cells.get(s.id, [])]
    run.extra["sessions"] = [{"history_id": s.id, "finished_utc": s.finished_utc, "label": s.label,
                              "vllm_version": s.vllm_version} for s in usable]
    run.extra["server_starts"] = [st for s in usable for st in s.extra.get("server_starts") or []]
    return run


def _tag(cell: CellResult, session: int) -> CellResult:
    from dataclasses import replace  # noqa: PLC0415

    return replace(cell, extra={**cell.extra, SESSION_KEY: session})


# -------------------------------------------------------------------------------------------- trend


def trend_metrics(gates: Sequence[str] = (), objectives: Sequence[str] = ()) -> list[str]:
    """The statistics a trend shows: E2E p50, then every gated one (`e2e_p95:10%`) and every asserted
    objective's (`e2e_p95_s`, `ttft_p99_ms`, `tokens_per_s_per_user_min`), in that order, once each."""
    from ..vocabulary import parse_limit_key  # noqa: PLC0415

    names = ["e2e_p50"]
    for g in gates:
        gate = parse_gate(g)
        if not gate.run_level:
            names.append(gate.name)
    for key in objectives:
        lk = parse_limit_key(key)
        if lk is not None and lk.metric not in ("error_rate", "startup", "first_ttft"):
            names.append(lk.metric if lk.stat is None else f"{lk.metric}_{lk.stat}")
    return list(dict.fromkeys(names))


def _metric(name: str) -> tuple[str, str | None]:
    from ..vocabulary import METRICS  # noqa: PLC0415

    if name in METRICS:
        return name, None
    base, _, stat = name.rpartition("_")
    return base, stat


def trend(path: Path | str, run: RunResult, *, session_id: int | None = None, metrics: Sequence[str] = ("e2e_p50",),
          baseline: RunResult | None = None, last: int = 30) -> dict[str, Any]:
    """The trend of each cell of `run` over the history's sessions of its deployment (the last `last`),
    for `report.html`: per session its repeats' values (invalid ones marked), this session marked, the
    baseline's band (a 95 % prediction interval for one more session from the baseline's sessions, or
    the range of its repeats with one session) and the vLLM version of every session."""
    found = sessions(path, like=run.environment)[-last:]
    cells = _cells(path, [s.id for s in found])
    keys = list(dict.fromkeys(cell_key(c) for c in run.cells if c.mode == "closed"))
    out_cells = []
    for key in keys:
        series: dict[str, list[dict[str, Any]]] = {}
        bands: dict[str, list[float] | None] = {}
        for name in metrics:
            metric, stat = _metric(name)
            points = []
            for i, s in enumerate(found):
                reps = [c for c in cells.get(s.id, []) if cell_key(c) == key]
                vals = [[c.value(metric, stat), c.ok and c.valid] for c in reps if c.ok]
                if vals:
                    points.append({"session": i, "values": vals})
            series[name] = points
            bands[name] = _band(baseline, key, metric, stat) if baseline is not None else None
        out_cells.append({"cell": key, "series": series, "band": bands})
    return {"path": str(path), "metrics": list(metrics), "current": _index_of(found, session_id),
            "sessions": [{"id": s.id, "finished_utc": s.finished_utc, "label": s.label, "vllm_version": s.vllm_version,
                          "interrupted": s.interrupted} for s in found],
            "cells": out_cells}


def _index_of(found: Sequence[Session], session_id: int | None) -> int | None:
    ids = [s.id for s in found]
    return ids.index(session_id) if session_id in ids else None


def _band(baseline: RunResult, key: str, metric: str, stat: str | None) -> list[float] | None:
    per_session: dict[int, list[float]] = {}
    for c in baseline.cells:
        if cell_key(c) == key and c.ok and c.valid and (v := c.value(metric, stat)) is not None and v > 0 \
                and math.isfinite(v):
            tag = c.extra.get(SESSION_KEY, 0) if isinstance(c.extra, dict) else 0
            per_session.setdefault(int(tag), []).append(v)
    if not per_session:
        return None
    if len(per_session) == 1:
        (vals,) = per_session.values()
        return [min(vals), max(vals)]
    means = [sum(math.log(v) for v in vals) / len(vals) for vals in per_session.values()]
    s_count = len(means)
    m = sum(means) / s_count
    sd = math.sqrt(sum((x - m) ** 2 for x in means) / (s_count - 1))
    half = t_quantile(0.975, s_count - 1) * sd * math.sqrt(1 + 1 / s_count)
    return [math.exp(m - half), math.exp(m + half)]
