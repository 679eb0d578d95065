"""How a session spreads repeats: the matrix in passes, the remaining repeats after the tests, and an
invalid repeat measured again (bounded) so that the verdict has valid repeats to work with. A runner
stand-in returns synthetic cells; no server."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from factories import repeat_cell

from pytest_llmload.errors import ServerStoppedError
from pytest_llmload.options import Settings
from pytest_llmload.results import CellResult, CellSpec
from pytest_llmload.session import LoadSession


class ScriptedRunner:
    """Answers each measurement with a cell; `invalid(spec, nth)` says whether the nth one of that cell
    (0-based, per runner) is invalid."""

    def __init__(self, name: str, log: list[tuple[str, int]], invalid: Callable[[CellSpec, int], bool]) -> None:
        self.name, self.log, self.invalid, self.seen = name, log, invalid, {}  # type: ignore[var-annotated]

    def run_cell(self, spec: CellSpec) -> CellResult:
        nth = self.seen[spec.users] = self.seen.get(spec.users, -1) + 1
        self.log.append((self.name, spec.users))
        bad = self.invalid(spec, nth)
        cell = repeat_cell(spec.users, spec.prompt_tokens, e2e=0.5, valid=not bad, reasons=("stall",) if bad else ())
        return dataclasses.replace(cell, rounds=spec.rounds)


class StubServer:
    """A launched server that is up (`returncode()` None) until `exit_code` is set."""

    def __init__(self) -> None:
        self.exit_code: int | None = None

    def returncode(self) -> int | None:
        return self.exit_code

    def log_tail(self, lines: int = 40) -> str:
        return "INFO: Shutting down"


def _session(repeats: int, invalid: Callable[[CellSpec, int], bool] = lambda s, n: False,
             candidate: bool = False, b_invalid: Callable[[CellSpec, int], bool] = lambda s, n: False
             ) -> tuple[LoadSession, list[tuple[str, int]]]:
    settings = Settings(users=(8, 32), prompt_tokens=(63,), repeats=repeats,
                        candidate_server_arg=("--max-num-seqs=4",) if candidate else ())
    load = LoadSession(settings)
    log: list[tuple[str, int]] = []
    for side, invalid_of in ((load.a, invalid), (load.b, b_invalid)):
        if side is not None:  # a side that is up, with a scripted runner in place of the server
            side.write_reports = lambda formats=(): []  # type: ignore[method-assign]
            side.server, side.state = StubServer(), "up"  # type: ignore[assignment]
            side._runner = ScriptedRunner(side.name, log, invalid_of)  # type: ignore[assignment]
    return load, log


def test_the_matrix_runs_in_passes() -> None:
    load, log = _session(3)
    load.matrix()
    assert log == [("A", 8), ("A", 32)] * 3


def test_an_invalid_repeat_is_measured_again_up_to_twice_the_repeats() -> None:
    load, log = _session(3, invalid=lambda spec, nth: spec.users == 32 and nth < 2)
    load.matrix()
    assert [u for _, u in log].count(8) == 3 and [u for _, u in log].count(32) == 5  # 2 invalid + 3 valid
    always, log = _session(3, invalid=lambda spec, nth: spec.users == 32)
    always.matrix()
    assert [u for _, u in log].count(32) == 6  # bounded: then the verdict says "invalid"


def test_one_repeat_keeps_an_invalid_cell_as_it_is() -> None:
    load, log = _session(1, invalid=lambda spec, nth: True)
    load.matrix()
    assert log == [("A", 8), ("A", 32)] and not load.run.cells[0].valid


def test_tests_measure_once_and_the_rest_comes_after_in_ab_order() -> None:
    load, log = _session(2, candidate=True, b_invalid=lambda spec, nth: spec.users == 8 and nth == 0)
    load.run_cell(8, 63)
    load.run_cell(32, 63)
    assert log == [("A", 8), ("B", 8), ("B", 32), ("A", 32)]
    load.complete_repeats()
    # pass 2: cell 8 B first, cell 32 A first; then cell 8 once more, since B's first 8-user repeat was invalid
    assert log[4:] == [("B", 8), ("A", 8), ("A", 32), ("B", 32), ("A", 8), ("B", 8)]
    assert len(load.run.cells) == 5 and len(load.b.run.cells) == 5  # type: ignore[union-attr]


def test_a_closed_side_is_never_measured_and_says_so() -> None:
    load, log = _session(3)
    load.run_cell(8, 63)
    load.close()
    with pytest.raises(ServerStoppedError, match="side A: the session has closed its server"):
        load.complete_repeats()
    assert log == [("A", 8)] and len(load.run.cells) == 1  # nothing recorded as a failed cell


def test_a_server_gone_before_a_measurement_is_an_error_of_the_session() -> None:
    load, log = _session(1)
    load.run_cell(8, 63)
    load.a.server.exit_code = 0  # type: ignore[union-attr]
    with pytest.raises(ServerStoppedError, match=r"exited \(code 0\) before this measurement started"):
        load.run_cell(32, 63)
    assert log == [("A", 8)] and [c.users for c in load.run.cells] == [8]


def test_rounds_make_another_cell() -> None:
    load, log = _session(2)
    load.run_cell(4, 31, rounds=3)
    load.run_cell(4, 31)
    load.complete_repeats()
    assert len(log) == 4 and {c.rounds for c in load.run.cells} == {1, 3}
    assert [len(load.run.repeats_of(c.key)) for c in load.run.cells[:2]] == [2, 2]
