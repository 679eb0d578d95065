"""What a test holds to measure (pytest-free, so a script can use the same objects):

    LoadFixture   what `llm_load` is: llm_load(users, prompt_tokens) -> CellResult; .max_users(...);
                  .open_loop(...); .cached(...); .check(slo, cell); .conversations(...); .replay(...)
    Matrix        what `llm_matrix` is: the configured matrix, measured once; .cell(users=, prompt_tokens=)
    check_objective   one objective against a session: the cells it selects, or, for a capacity objective
                      (`min_users`), a capacity probe at every prompt size it names. The plugin uses it for
                      `llm_slo` markers and for the objectives of --llm-slo-file / the `llm_slo` ini option.

Every cell a test measures is handed to `sink`, so the plugin can check the test's `llm_slo` markers
against exactly those cells.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CellFailedError, ConfigError, SLOViolation
from ..gate.capacity import CapacityResult, Inconclusive, find_max_users
from ..objectives import SLO
from ..report.table import failure_message
from ..results import CellResult, CellSpec, RunResult
from .core import LoadSession


class LoadFixture:
    """Call it to measure a cell; `.max_users(...)` for capacity; `.open_loop(...)` for a request rate."""

    def __init__(self, session: LoadSession, sink: Callable[[CellResult], None] = lambda cell: None) -> None:
        self._session = session
        self._sink = sink

    def __call__(self, users: int, prompt_tokens: int, max_tokens: int | None = None,
                 rounds: int | None = None, *, cache: str = "", allow_failed: bool = False) -> CellResult:
        """Measure one closed-loop cell: `users` requests at once, each with a prompt of `prompt_tokens`.
        `cache`: the prefix-cache state to put the server in first ("cold", "warm", "uncontrolled").
        A cell that could not run fails the test (CellFailedError: who was at fault, the error, and for a
        fault of the server its log tail) unless `allow_failed=True`: a load test whose load never ran does
        not pass."""
        if cache:
            spec = dataclasses.replace(self._session.closed_spec(users, prompt_tokens, max_tokens, rounds),
                                       cache=cache)
            return self._kept(self._session.measure(spec), allow_failed)
        return self._kept(self._session.run_cell(users, prompt_tokens, max_tokens, rounds), allow_failed)

    def conversations(self, users: int, turns: int, prompt_tokens: int, max_tokens: int | None = None,
                      think_time_s: float = 0.0, *, cache: str = "", allow_failed: bool = False) -> CellResult:
        """Each of `users` holds a chat conversation of `turns` turns: turn k sends the history and a new
        message of `prompt_tokens` tokens. Records carry conversation and turn; `cell.extra["turns"]`
        has TTFT, E2E and the cached share per turn."""
        spec = conversation_spec(self._session, users, turns, prompt_tokens, max_tokens, think_time_s, cache)
        return self._kept(self._session.measure(spec), allow_failed)

    def replay(self, path: str | Path | None = None, *, users: int | None = None, speed: float | None = None,
               cache: str = "", goodput_ttft_ms: float | None = None, goodput_tpot_ms: float | None = None,
               allow_failed: bool = False) -> CellResult:
        """Replay a JSONL trace (default: --llm-workload): with `users`, closed loop (each user takes the
        next conversation); else open loop at the trace's arrival times divided by `speed` (default
        --llm-workload-speed). `goodput_*`: per-request limits; the cell's `goodput` is the share met."""
        spec = replay_spec(self._session, path, users=users, speed=speed, cache=cache,
                           goodput_ttft_ms=goodput_ttft_ms, goodput_tpot_ms=goodput_tpot_ms)
        return self._kept(self._session.measure(spec), allow_failed)

    def cached(self, users: int, prompt_tokens: int, max_tokens: int | None = None, rounds: int | None = None,
               *, allow_failed: bool = False) -> CellResult:
        """The cell from this session if it was already measured (e.g. by the matrix), else measure it."""
        return self._kept(self._session.cached_cell(users, prompt_tokens, max_tokens, rounds), allow_failed)

    def check(self, slo: SLO, cell: CellResult) -> None:
        """Check an objective against a cell (SLOViolation with cell, metric, observed vs limit)."""
        slo.check(cell)

    def open_loop(self, rate: float, duration_s: float, prompt_tokens: int, max_tokens: int | None = None,
                  poisson: bool = True, seed: int = 0, *, allow_failed: bool = False) -> CellResult:
        """Send `rate` requests/s (Poisson or constant) for `duration_s` seconds."""
        cell = self._session.run_open_loop(rate, duration_s, prompt_tokens, max_tokens, poisson, seed)
        return self._kept(cell, allow_failed)

    def max_users(self, slo: SLO | dict[str, Any] | None = None, *, prompt_tokens: int,
                  max_tokens: int | None = None, start: int = 1, limit: int = 128, margin: float = 0.05,
                  repeats: int = 2, **objectives: Any) -> CapacityResult:
        """The largest number of simultaneous users meeting the objective (doubling, then bisecting)."""
        if not isinstance(slo, SLO):
            slo = SLO.from_kwargs({**(slo or {}), **objectives}, where="llm_load.max_users()")
        # Probes are recorded in the run but not handed to the test's llm_slo markers: missing the objective
        # beyond capacity is what the search is for.
        return find_max_users(lambda u: self._session.run_cell(u, prompt_tokens, max_tokens), slo,
                              prompt_tokens=prompt_tokens, start=start, limit=limit, margin=margin, repeats=repeats)

    def _kept(self, cell: CellResult, allow_failed: bool = True) -> CellResult:
        self._sink(cell)
        if not cell.ok and not allow_failed:
            raise CellFailedError(failed_message(cell, self._session.server_log_tail()))
        return cell


def conversation_spec(session: LoadSession, users: int, turns: int, prompt_tokens: int,
                      max_tokens: int | None = None, think_time_s: float = 0.0, cache: str = "") -> CellSpec:
    """A conversation cell with the session's defaults for what is not given."""
    return CellSpec(users=users, prompt_tokens=prompt_tokens, max_tokens=max_tokens or session.settings.max_tokens,
                    turns=turns, think_time_s=think_time_s, cache=cache)


def replay_spec(session: LoadSession, path: str | Path | None = None, *, users: int | None = None,
                speed: float | None = None, cache: str = "", goodput_ttft_ms: float | None = None,
                goodput_tpot_ms: float | None = None) -> CellSpec:
    """A replay of a trace file (default: --llm-workload) as a cell."""
    from ..load.trace import load_workload  # noqa: PLC0415 - only for replays

    path = path or session.settings.workload
    if path is None:
        raise ConfigError("llm_load.replay() needs a trace: a path, or --llm-workload PATH")
    workload = load_workload(path)
    return CellSpec(users=users or 0, prompt_tokens=0, max_tokens=0, mode="closed" if users else "open",
                    workload=workload, speed=speed or session.settings.workload_speed, cache=cache,
                    goodput_ttft_s=None if goodput_ttft_ms is None else goodput_ttft_ms / 1000.0,
                    goodput_tpot_s=None if goodput_tpot_ms is None else goodput_tpot_ms / 1000.0)


def failed_message(cell: CellResult, log_tail: str = "") -> str:
    """Why a cell a test asked for could not run (`report.table.failure_message`: who was at fault, the
    error, the server log tail for a fault of the server), and how a test that expects it says so."""
    return (failure_message(cell, log_tail) + "\n(a test that expects this passes allow_failed=True "
            "and reads cell.ok)")


class Matrix:
    """The configured matrix, measured once per session; `cell(users=, prompt_tokens=)` reads one."""

    def __init__(self, session: LoadSession) -> None:
        self._session = session

    @property
    def run(self) -> RunResult:
        return self._session.run

    def cell(self, users: int, prompt_tokens: int) -> CellResult:
        return self._session.cached_cell(users, prompt_tokens)

    def cells(self) -> list[CellResult]:
        s = self._session.settings
        return [self.cell(u, p) for p in s.prompt_tokens for u in s.users]


def objective_prompt_sizes(session: LoadSession, slo: SLO) -> list[int]:
    """The prompt sizes an objective names; unset: every prompt size of the configured matrix."""
    return sorted(slo.prompt_tokens or session.settings.prompt_tokens)


def objective_cells(session: LoadSession, slo: SLO) -> list[CellResult]:
    """The cells an objective selects (unset selectors: the configured matrix's users and prompt sizes),
    taken from the run when already measured, else measured now."""
    if slo.workload is not None:
        return [session.cached_spec(_replay_for(session, slo, u)) for u in sorted(slo.users or {0})]
    users = sorted(slo.users or session.settings.users)
    if slo.turns is not None or slo.cache is not None:
        turns = slo.turns or 1
        return [session.cached_spec(dataclasses.replace(session.closed_spec(u, p, slo.max_tokens), turns=turns,
                                                        cache=slo.cache or ""))
                for p in objective_prompt_sizes(session, slo) for u in users]
    return [session.cached_cell(u, p, slo.max_tokens) for p in objective_prompt_sizes(session, slo) for u in users]


def _replay_for(session: LoadSession, slo: SLO, users: int) -> CellSpec:
    """The replay an objective with `workload=NAME` selects: --llm-workload, whose stem must be NAME."""
    path = session.settings.workload
    if path is None or Path(path).stem != slo.workload:
        raise ConfigError(f"{slo.title}: workload={slo.workload} names no trace of this session; give "
                          f"--llm-workload PATH with a file named {slo.workload}.jsonl")
    limits = next((o.goodput_limits for o in slo.objectives if o.goodput_limits), (None, None))
    return replay_spec(session, path, users=users or None, cache=slo.cache or "",
                       goodput_ttft_ms=None if limits[0] is None else limits[0] * 1000,
                       goodput_tpot_ms=None if limits[1] is None else limits[1] * 1000)


def check_cells(slo: SLO, cells: list[CellResult]) -> None:
    """Check every cell (so every observed value is reported); one SLOViolation listing all misses."""
    if not cells:
        raise SLOViolation(f"{slo.title}: no cell matches its selectors")
    messages = []
    for cell in cells:
        try:
            slo.check(cell)
        except SLOViolation as exc:
            messages.append(str(exc))
    if messages:
        raise SLOViolation("\n".join(messages))


def check_capacity(session: LoadSession, slo: SLO) -> list[CapacityResult]:
    """A capacity objective: at every prompt size it names, `min_users` simultaneous users meet the rest.

    One probe at `min_users` decides a pass (repeated when too close to call); only a miss searches
    below it, so the failure says how many users the server does hold. SLOViolation naming every
    prompt size that missed; Inconclusive when none missed but one was too close to call.
    """
    assert slo.min_users is not None
    load = LoadFixture(session)
    results = [load.max_users(slo, prompt_tokens=p, max_tokens=slo.max_tokens, start=slo.min_users,
                              limit=slo.min_users) for p in objective_prompt_sizes(session, slo)]
    missed, unsure = [], []
    for result in results:
        try:
            result.assert_at_least(slo.min_users)
        except SLOViolation as exc:
            missed.append(f"at prompt_tokens={result.prompt_tokens}: {exc}")
        except Inconclusive as exc:
            unsure.append(f"at prompt_tokens={result.prompt_tokens}: {exc}")
    if missed:
        raise SLOViolation("\n".join(missed + unsure))
    if unsure:
        raise Inconclusive("\n".join(unsure))
    return results


def check_starts(session: LoadSession, slo: SLO) -> None:
    """The start objectives of `slo` against every server start the session recorded (A, B, restarts),
    once per start: one line per miss, naming the start and its phases. Measures no cell."""
    starts = session.starts()
    if not starts:
        raise SLOViolation(f"{slo.title}: no server start to judge: the server was attached (--llm-base-url), "
                           "and only a server this session starts has a start-up time")
    misses = slo.start_misses(starts)
    if misses:
        raise SLOViolation("\n".join(misses))


def check_objective(session: LoadSession, slo: SLO, cells: list[CellResult] | None = None) -> None:
    """Check one objective against the session: its start part on the server's starts, its cell part on
    `cells` (else the cells it selects, measured when needed) or, with `min_users`, as a capacity at every
    prompt size it names. One SLOViolation keeping the starts and the cells apart."""
    parts: list[tuple[str, Callable[[], object]]] = []
    cell_part = slo.cell_part()
    if cell_part is not None and cell_part.min_users:
        parts.append(("capacity", lambda: check_capacity(session, cell_part)))
    elif cell_part is not None:
        parts.append(("cells", lambda: check_cells(cell_part, cells or objective_cells(session, cell_part))))
    if slo.start_objectives:  # after the cells: starting B (sides taking turns) then stops A only once
        parts.append(("server starts", lambda: check_starts(session, slo)))
    _check_parts(parts)


def _check_parts(parts: list[tuple[str, Callable[[], object]]]) -> None:
    """Run every part (so every miss is reported); one SLOViolation, with headings when there are two."""
    missed = []
    for name, check in parts:
        try:
            check()
        except SLOViolation as exc:
            missed.append((name, str(exc)))
    if len(missed) == 1 and len(parts) == 1:
        raise SLOViolation(missed[0][1])
    if missed:
        raise SLOViolation("\n".join(f"{name}:\n{text}" for name, text in missed))
