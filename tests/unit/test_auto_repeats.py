"""`--llm-repeats auto`: a session looks at each gated cell after every block of one repeat a side and
stops when the gates conclude, the repeats are spent, or the budget would be exceeded. Scripted sides
(the real Side lifecycle, a stub server and runner, see test_repeats.py); the stopping rule's error
rates are simulated in test_sequential.py."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from typing import Any

import pytest
from factories import repeat_cell

from pytest_llmload.errors import ConfigError
from pytest_llmload.options import Settings
from pytest_llmload.results import CellResult, CellSpec
from pytest_llmload.session import PROBE, LoadSession, Side, check_settings
from pytest_llmload.session.auto import Pair, max_looks, repeat_until_conclusive
from pytest_llmload.vocabulary import parse_gate

GATE = parse_gate("e2e_p50:10%")


class Runner:
    """E2E of each repeat: `level` times a per-repeat factor drawn with sigma `spread` (the spread between
    repeats a session shows), reproducible."""

    def __init__(self, name: str, log: list[str], level: float, spread: float, seed: int) -> None:
        self.name, self.log, self.level, self.spread = name, log, level, spread
        self.rng = random.Random(seed)

    def start(self) -> None:
        """The set-up check (`LoadRunner.start`): nothing to check here."""

    def run_cell(self, spec: CellSpec) -> CellResult:
        if spec == PROBE:
            return repeat_cell(1, spec.prompt_tokens, e2e=0.1)
        self.log.append(f"{self.name}{spec.users}")
        e2e = self.level * self.rng.lognormvariate(0, self.spread)
        return dataclasses.replace(repeat_cell(spec.users, spec.prompt_tokens, e2e=e2e, noise=0.001),
                                   max_tokens=spec.max_tokens)


def _side(side: Side, runner: Runner) -> None:
    side.write_reports = lambda formats=(): []  # type: ignore[method-assign]
    side._plan_placement = lambda: None  # type: ignore[method-assign]
    side._server_context = lambda: contextlib.nullcontext(_Up())  # type: ignore[method-assign,assignment,return-value,arg-type]
    side._place_client = lambda server: None  # type: ignore[method-assign,assignment,return-value]
    side._environment = lambda server: {"stub": True}  # type: ignore[method-assign]
    side._make_runner = lambda: contextlib.nullcontext(runner)  # type: ignore[method-assign,assignment,return-value]


class _Up:
    startup_s = 1.0

    def returncode(self) -> None:
        return None

    def log_tail(self, lines: int = 40) -> str:
        return ""


def _ab(b_level: float, spread: float, ab_mode: str = "together", **options: Any) -> tuple[LoadSession, list[str]]:
    settings = Settings(users=(8, 32), prompt_tokens=(63,), repeats="auto", compare_fail=("e2e_p50:10%",),
                        candidate_server_arg=("--max-num-seqs=4",), warmup="none", ab_mode=ab_mode, **options)
    load = LoadSession(settings)
    log: list[str] = []
    _side(load.a, Runner("A", log, 1.0, spread, seed=1))
    assert load.b is not None
    _side(load.b, Runner("B", log, b_level, spread, seed=2))
    return load, log


def _pairs(load: LoadSession) -> list[Pair]:
    assert load.b is not None
    return [Pair(load.b.run, load.run, ("in B", "in A"), by_session=False)]


def _auto(load: LoadSession, clock: Any = None) -> Any:
    load.matrix()  # what the tests and the remaining repeats leave: 2 repeats a side
    kwargs = {} if clock is None else {"clock": clock}
    return repeat_until_conclusive(load, lambda: _pairs(load), [GATE], **kwargs)


def test_a_clear_regression_concludes_at_the_first_look_and_measures_nothing_more() -> None:
    load, log = _ab(b_level=2.0, spread=0.02)
    record = _auto(load)
    assert record.looks == 1 and record.stopped == "every gated verdict is conclusive" and record.undecided == []
    assert len(log) == 8  # 2 cells x 2 repeats x 2 sides


def test_a_small_change_in_noise_is_measured_again_until_it_concludes_or_the_repeats_are_spent() -> None:
    load, log = _ab(b_level=1.08, spread=0.05, max_repeats=6)
    record = _auto(load)
    assert record.looks > 1 and len(log) > 8
    per_side = max(len(load.run.repeats_of(c.key)) for c in load.run.cells)
    assert per_side <= 6 and record.max_looks == max_looks(load.settings) == 5
    if record.undecided:  # spent: said, with the cells still undecided
        assert record.stopped.startswith("--llm-max-repeats 6 reached") and per_side == 6
    else:
        assert record.stopped == "every gated verdict is conclusive"


def test_only_the_undecided_cells_are_measured_again() -> None:
    load, log = _ab(b_level=1.0, spread=0.05, max_repeats=4)
    load.a._make_runner = lambda: contextlib.nullcontext(  # type: ignore[method-assign,assignment,return-value]
        _TwoLevels("A", log, {8: (1.0, 0.001), 32: (1.0, 0.08)}))
    assert load.b is not None
    load.b._make_runner = lambda: contextlib.nullcontext(  # type: ignore[method-assign,assignment,return-value]
        _TwoLevels("B", log, {8: (3.0, 0.001), 32: (1.05, 0.08)}))
    record = _auto(load)
    assert log[8:] and set(log[8:]) <= {"A32", "B32"}, log  # 8 users: a clear regression at the first look
    assert record.looks >= 2


class _TwoLevels(Runner):
    def __init__(self, name: str, log: list[str], levels: dict[int, tuple[float, float]]) -> None:
        super().__init__(name, log, 1.0, 0.0, seed=3 if name == "A" else 4)
        self.levels = levels

    def run_cell(self, spec: CellSpec) -> CellResult:
        if spec != PROBE:
            self.level, self.spread = self.levels[spec.users]
        return super().run_cell(spec)


def test_the_budget_stops_before_a_block_that_would_not_end_in_time() -> None:
    load, log = _ab(b_level=1.0, spread=0.1, gate_budget=1.0)  # 1 minute
    now = [0.0]

    def clock() -> float:
        now[0] += 20.0  # every reading 20 s later: a block takes about 40 s here
        return now[0]

    record = _auto(load, clock)
    assert record.stopped.startswith("--llm-gate-budget 1 min spent") and record.undecided
    assert 8 < len(log) <= 8 + 2 * 4  # at most the block that fitted, never one that would end late


def test_sides_taking_turns_measure_a_block_each_per_look_the_side_that_is_up_first() -> None:
    load, log = _ab(b_level=1.0, spread=0.1, ab_mode="alternate", max_repeats=3)
    load.matrix()
    up = [s.name for s in load.sides if s.state == "up"]
    before = len(log)
    repeat_until_conclusive(load, lambda: _pairs(load), [GATE])
    extra = log[before:]
    # At least one look more (2 repeats of noise at 10 % cannot conclude): each look is one block a side, the
    # side already up first, each cell once.
    assert extra and len(extra) % 4 == 0
    assert extra[0][0] == up[0] and sorted(e[0] for e in extra) == ["A", "A", "B", "B"]


def test_auto_needs_a_gate_and_max_repeats_at_least_two() -> None:
    with pytest.raises(ConfigError, match="--llm-repeats auto .* needs --llm-compare-fail"):
        check_settings(Settings(repeats="auto", candidate_server_arg=("--max-num-seqs=4",)))
    from pytest_llmload.options import parse_max_repeats, parse_repeats

    assert parse_repeats("AUTO") == "auto" and parse_repeats("4") == 4
    with pytest.raises(Exception, match="must be 2 or more"):
        parse_max_repeats("1")
    assert Settings(repeats="auto").effective_repeats == 2


def test_a_block_that_would_not_end_within_the_budget_is_not_started() -> None:
    """Before the first extra block its duration is estimated from the cells' last repeats (about 1 s
    each here, 2 cells on 2 sides): a budget of 1.2 s does not cover it."""
    load, log = _ab(b_level=1.0, spread=0.1, gate_budget=0.02)
    record = _auto(load)
    assert record.looks == 1 and record.stopped.startswith("--llm-gate-budget 0.02 min spent") and len(log) == 8
