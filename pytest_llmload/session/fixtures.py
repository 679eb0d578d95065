"""What a test holds to measure (pytest-free, so a script can use the same objects):

    LoadFixture   what `llm_load` is: llm_load(users, prompt_tokens) -> CellResult; .max_users(...);
                  .open_loop(...); .cached(...); .check(slo, cell)
    Matrix        what `llm_matrix` is: the configured matrix, measured once; .cell(users=, prompt_tokens=)
    check_objective   one objective against a session: the cells it selects, or, for a capacity objective
                      (`min_users`), a capacity probe at every prompt size it names. The plugin uses it for
                      `llm_slo` markers and for the objectives of --llm-slo-file / the `llm_slo` ini option.

Every cell a test measures is handed to `sink`, so the plugin can check the test's `llm_slo` markers
against exactly those cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import SLOViolation
from ..gate.capacity import CapacityResult, Inconclusive, find_max_users
from ..objectives import SLO
from ..results import CellResult, RunResult
from .core import LoadSession


class LoadFixture:
    """Call it to measure a cell; `.max_users(...)` for capacity; `.open_loop(...)` for a request rate."""

    def __init__(self, session: LoadSession, sink: Callable[[CellResult], None] = lambda cell: None) -> None:
        self._session = session
        self._sink = sink

    def __call__(self, users: int, prompt_tokens: int, max_tokens: int | None = None,
                 rounds: int | None = None) -> CellResult:
        """Measure one closed-loop cell: `users` requests at once, each with a prompt of `prompt_tokens`."""
        return self._kept(self._session.run_cell(users, prompt_tokens, max_tokens, rounds))

    def cached(self, users: int, prompt_tokens: int, max_tokens: int | None = None) -> CellResult:
        """The cell from this session if it was already measured (e.g. by the matrix), else measure it."""
        return self._kept(self._session.cached_cell(users, prompt_tokens, max_tokens))

    def check(self, slo: SLO, cell: CellResult) -> None:
        """Check an objective against a cell (SLOViolation with cell, metric, observed vs limit)."""
        slo.check(cell)

    def open_loop(self, rate: float, duration_s: float, prompt_tokens: int, max_tokens: int | None = None,
                  poisson: bool = True, seed: int = 0) -> CellResult:
        """Send `rate` requests/s (Poisson or constant) for `duration_s` seconds."""
        return self._kept(self._session.run_open_loop(rate, duration_s, prompt_tokens, max_tokens, poisson, seed))

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

    def _kept(self, cell: CellResult) -> CellResult:
        self._sink(cell)
        return cell


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
    users = sorted(slo.users or session.settings.users)
    return [session.cached_cell(u, p, slo.max_tokens) for p in objective_prompt_sizes(session, slo) for u in users]


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


def check_objective(session: LoadSession, slo: SLO) -> None:
    """Check one objective against the session: its cells, or its capacity at every prompt size it names."""
    if slo.min_users:
        check_capacity(session, slo)
    else:
        check_cells(slo, objective_cells(session, slo))
