"""A baseline is several sessions: saving into an existing baseline of the same deployment adds this
session to it (the last MAX_SESSIONS are kept), because a verdict against a baseline needs the spread
*between sessions*, which no single session can show (see `gate/stats.py`).

Each cell of a baseline carries the session it was measured in (`extra["baseline_session"]`: 0 for the
oldest kept), and `extra["sessions"]` lists when and on what each session ran. The environment is the
newest session's. A baseline of another deployment (model, weights, layout, hardware, workload) is not
added to: it is replaced, and the note says why.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..results import CellResult, RunResult
from .compare import SESSION_KEY, STARTS_KEY, session_of
from .provenance import differences

MAX_SESSIONS = 10
SESSIONS_KEY = "sessions"


def session_count(run: RunResult) -> int:
    """How many sessions a baseline holds (1 for a plain run)."""
    return 1 + max((session_of(c) for c in run.cells), default=0)


def add_session(existing: RunResult | None, run: RunResult, keep: int = MAX_SESSIONS) -> tuple[RunResult, str]:
    """The baseline to save: `existing` with `run` added as its newest session (oldest dropped beyond
    `keep`), or `run` alone when there is no compatible baseline; and a note saying which."""
    if existing is None:
        return _tagged(run, 0, [_session_facts(run)], starts=_starts(run)), "a new baseline of 1 session"
    deployment = [d.describe() for d in differences(run.environment, existing.environment) if d.deployment]
    if deployment:
        return (_tagged(run, 0, [_session_facts(run)], starts=_starts(run)),
                "the existing baseline was of another deployment and was replaced: " + "; ".join(deployment))
    count = session_count(existing)
    drop = max(0, count + 1 - keep)
    old = [dataclasses.replace(c, extra={**c.extra, SESSION_KEY: session_of(c) - drop})
           for c in existing.cells if session_of(c) >= drop]
    facts = _facts_of(existing, count)[drop:] + [_session_facts(run)]
    merged = _tagged(run, count - drop, facts, starts=_starts(existing) + _starts(run))
    merged.cells[:0] = old
    return merged, f"this session added to the baseline: {count - drop + 1} session(s)"


def _tagged(run: RunResult, session: int, facts: list[dict[str, Any]], starts: list[Any]) -> RunResult:
    cells: list[CellResult] = [dataclasses.replace(c, extra={**c.extra, SESSION_KEY: session}) for c in run.cells]
    # verdicts of this run and the trend drawn for it are not data of a baseline
    extra = {k: v for k, v in run.extra.items() if k not in ("comparisons", "history")}
    extra.update({SESSIONS_KEY: facts, STARTS_KEY: starts})
    return RunResult(environment=dict(run.environment), cells=cells, interrupted=run.interrupted, extra=extra)


def _starts(run: RunResult) -> list[Any]:
    starts = run.extra.get(STARTS_KEY)
    return list(starts) if isinstance(starts, list) else []


def _facts_of(baseline: RunResult, count: int) -> list[dict[str, Any]]:
    facts = baseline.extra.get(SESSIONS_KEY)
    if isinstance(facts, list) and len(facts) == count:
        return list(facts)
    return [{} for _ in range(count - 1)] + [_session_facts(baseline)]  # a baseline saved before sessions


def _session_facts(run: RunResult) -> dict[str, Any]:
    env = run.environment
    return {k: env.get(k) for k in ("timestamp_utc", "host", "load_average", "vllm_version", "torch_version",
                                     "git_commit")}
