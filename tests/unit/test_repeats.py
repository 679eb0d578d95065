"""How a session spreads repeats: the matrix in passes, the remaining repeats after the tests, and an
invalid repeat measured again (bounded) so that the verdict has valid repeats to work with. A runner
stand-in returns synthetic cells; no server."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from factories import repeat_cell

from pytest_llmload.errors import ServerStoppedError, SetupError
from pytest_llmload.options import Settings
from pytest_llmload.results import CellResult, CellSpec
from pytest_llmload.session import PROBE, LoadSession, Side


EVENTS: list[str] = []  # cells ("A8": side A, 8 users) and starts/stops, in order, for the test running


class ScriptedRunner:
    """Answers each measurement with a cell; `invalid(spec, nth)` says whether the nth one of that cell
    (0-based, per runner) is invalid."""

    def __init__(self, name: str, log: list[tuple[str, int]], invalid: Callable[[CellSpec, int], bool]) -> None:
        self.name, self.log, self.invalid, self.seen = name, log, invalid, {}  # type: ignore[var-annotated]
        self.setup_fault: SetupError | None = None  # what `start()` raises (the set-up check), when set
        self.calls: list[str] = []  # "start", "probe" and the users of each cell, in order

    def start(self) -> None:
        self.calls.append("start")
        if self.setup_fault is not None:
            raise self.setup_fault

    def run_cell(self, spec: CellSpec) -> CellResult:
        self.calls.append("probe" if spec == PROBE else str(spec.users))
        if spec == PROBE:  # the first request after a start (recorded as the start, not as a cell)
            return repeat_cell(1, spec.prompt_tokens, e2e=0.1)
        nth = self.seen[spec.users] = self.seen.get(spec.users, -1) + 1
        self.log.append((self.name, spec.users))
        EVENTS.append(f"{self.name}{spec.users}")
        bad = self.invalid(spec, nth)
        cell = repeat_cell(spec.users, spec.prompt_tokens, e2e=0.5, valid=not bad, reasons=("stall",) if bad else ())
        return dataclasses.replace(cell, rounds=spec.rounds)


class StubServer:
    """A launched server that is up (`returncode()` None) until `exit_code` is set."""

    startup_s = 1.0

    def __init__(self) -> None:
        self.exit_code: int | None = None

    def returncode(self) -> int | None:
        return self.exit_code

    def log_tail(self, lines: int = 40) -> str:
        return "INFO: Shutting down"


def _session(repeats: int, invalid: Callable[[CellSpec, int], bool] = lambda s, n: False,
             candidate: bool = False, b_invalid: Callable[[CellSpec, int], bool] = lambda s, n: False,
             **options: Any) -> tuple[LoadSession, list[tuple[str, int]]]:
    options = {"warmup": "none", "ab_mode": "together", **options}
    EVENTS.clear()
    settings = Settings(users=(8, 32), prompt_tokens=(63,), repeats=repeats,
                        candidate_server_arg=("--max-num-seqs=4",) if candidate else (), **options)
    load = LoadSession(settings)
    log: list[tuple[str, int]] = []
    for side, invalid_of in ((load.a, invalid), (load.b, b_invalid)):
        if side is not None:
            _scripted(side, ScriptedRunner(side.name, log, invalid_of))
    return load, log


def _runner_of(side: Side) -> ScriptedRunner:
    runner = side._make_runner().__enter__()  # the scripted runner behind the side
    assert isinstance(runner, ScriptedRunner)
    return runner


def _scripted(side: Side, runner: ScriptedRunner) -> None:
    """The side's real lifecycle with a stub server and a scripted runner in place of vLLM and the load
    engine (nothing placed, nothing launched); starts and stops are logged in EVENTS."""
    side.write_reports = lambda formats=(): []  # type: ignore[method-assign]
    side._plan_placement = lambda: None  # type: ignore[method-assign]
    side._server_context = lambda: contextlib.nullcontext(StubServer())  # type: ignore[method-assign,assignment,return-value,arg-type]
    side._place_client = lambda server: None  # type: ignore[method-assign,assignment,return-value]
    side._environment = lambda server: {"stub": True}  # type: ignore[method-assign]
    side._make_runner = lambda: contextlib.nullcontext(runner)  # type: ignore[method-assign,assignment,return-value]
    real_start, real_stop = side.start, side.stop

    def start(placement_from: Side | None = None) -> Any:
        starting = side.server is None
        server = real_start(placement_from)
        if starting:
            EVENTS.append(f"start {side.name}")
        return server

    def stop() -> None:
        if side.server is not None:
            EVENTS.append(f"stop {side.name}")
        real_stop()

    side.start = start  # type: ignore[method-assign]
    side.stop = stop  # type: ignore[method-assign]


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


def test_a_side_the_session_stopped_is_never_measured_and_says_so() -> None:
    load, log = _session(1)
    load.run_cell(8, 63)
    load.a.stop()
    with pytest.raises(ServerStoppedError, match=r"side A: the session stopped its server \(stopped\)"):
        load.a.measure(CellSpec(users=32, prompt_tokens=63, max_tokens=100))
    assert log == [("A", 8)] and [c.users for c in load.run.cells] == [8]


def test_a_server_that_died_on_its_own_is_measured_and_fails_as_the_server_under_test() -> None:
    """Not a fault of the session: the runner is asked (a real one fails the cell "server died" with the
    log tail, at once), the cell is recorded and the session goes on."""
    load, log = _session(1)
    load.run_cell(8, 63)
    load.a.server.exit_code = -9  # type: ignore[union-attr]
    load.run_cell(32, 63)
    assert log == [("A", 8), ("A", 32)] and [c.users for c in load.run.cells] == [8, 32]


def test_the_runner_checks_its_set_up_before_the_first_request() -> None:
    """`LoadRunner.start()` (the set-up check) comes before the start's probe and the first cell."""
    load, _ = _session(1)
    load.run_cell(8, 63)
    load.run_cell(32, 63)
    assert _runner_of(load.a).calls == ["start", "probe", "8", "32"]


def test_a_set_up_fault_fails_the_cell_as_setup_and_is_not_retried_per_test() -> None:
    """A SetupError before the first request: the cell asked for is recorded as failed with cause "setup"
    (the matrix's "error", never the server's "-"), its error naming the fix; later measurements on the
    side raise the same error without starting the load workers again."""
    load, log = _session(1)
    fault = SetupError("the server is at 127.0.0.1, this host's loopback\nfix: --llm-host 10.0.0.2")
    _runner_of(load.a).setup_fault = fault
    with pytest.raises(SetupError) as raised:
        load.run_cell(8, 63)
    assert raised.value is fault and log == [] and "server_starts" not in load.run.extra  # no request at all
    with pytest.raises(SetupError) as again:
        load.run_cell(32, 63)
    assert again.value is fault and _runner_of(load.a).calls == ["start"]
    assert [(c.users, c.ok, c.cause) for c in load.run.cells] == [(8, False, "setup"), (32, False, "setup")]
    assert load.run.cells[0].error == str(fault)


def test_a_set_up_fault_found_by_a_cell_is_recorded_and_kept_too() -> None:
    """A SetupError a cell raises (no /tokenize and no tokenizer) after the runner started: recorded as
    the cell's "setup" failure, and raised again for later cells without asking the runner."""
    load, _ = _session(1)
    runner = _runner_of(load.a)
    load.run_cell(8, 63)
    fault = SetupError("no working /tokenize\nfix: pass tokenizer_path")
    asked: list[int] = []

    def sizing_fails(spec: CellSpec) -> CellResult:
        asked.append(spec.users)
        raise fault

    runner.run_cell = sizing_fails  # type: ignore[method-assign]
    for users in (32, 8):
        with pytest.raises(SetupError) as raised:
            load.run_cell(users, 63)
        assert raised.value is fault
    assert asked == [32]  # the second cell did not ask the runner again
    assert [(c.users, c.ok, c.cause) for c in load.run.cells] == [(8, True, None), (32, False, "setup"),
                                                                  (8, False, "setup")]


def test_rounds_make_another_cell() -> None:
    load, log = _session(2)
    load.run_cell(4, 31, rounds=3)
    load.run_cell(4, 31)
    load.complete_repeats()
    assert len(log) == 4 and {c.rounds for c in load.run.cells} == {1, 3}
    assert [len(load.run.repeats_of(c.key)) for c in load.run.cells[:2]] == [2, 2]


def test_sides_that_take_turns_measure_in_blocks_a_b_b_a_on_one_server_at_a_time() -> None:
    """The tests measure on A (block 1); at the end B, B, A: one pass over the cells per block, the other
    side's server stopped first; consecutive blocks of a side share its start."""
    load, _ = _session(3, candidate=True, ab_mode="alternate")
    assert load.ab_mode == "alternate"
    load.run_cell(8, 63)
    load.run_cell(32, 63)
    load.complete_repeats()
    assert EVENTS == ["start A", "A8", "A32",
                      "stop A", "start B", "B8", "B32", "B8", "B32",
                      "stop B", "start A", "A8", "A32", "A8", "A32",
                      "stop A", "start B", "B8", "B32"]
    assert len(load.run.cells) == 6 and len(load.b.run.cells) == 6  # type: ignore[union-attr]


def test_after_every_start_each_cell_is_first_run_once_unrecorded() -> None:
    load, _ = _session(2, candidate=True, ab_mode="alternate", warmup="cell")
    load.run_cell(8, 63)
    load.complete_repeats()
    # A: warm-up + repeat 1 (test); B: warm-up + 2 repeats on one start; A: warm-up + repeat 2 on a new start
    assert EVENTS == ["start A", "A8", "A8", "stop A", "start B", "B8", "B8", "B8", "stop B", "start A", "A8", "A8"]
    cold = load.run.extra["cold_cells"]
    assert [c["start_index"] for c in cold] == [0, 1] and len(load.run.cells) == 2
    assert [c.extra["start_index"] for c in load.run.cells] == [0, 1]


def test_sides_sharing_compute_take_turns_by_default_and_attached_ones_cannot() -> None:
    assert _session(3, candidate=True, ab_mode="auto", device="cpu")[0].ab_mode == "alternate"
    attached = LoadSession(Settings(base_url="http://127.0.0.1:9", candidate_base_url="http://127.0.0.1:10"))
    assert attached.ab_mode == "together" and "attached and cannot be stopped" in attached.ab_why
