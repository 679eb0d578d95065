"""`--llm-repeats auto`: after the tests (every cell at 2 repeats a side), look at each gated cell and
measure one more repeat a side of the cells whose verdict is not yet conclusive, until every gate
concludes, a side's repeats reach `--llm-max-repeats`, or `--llm-gate-budget` would be exceeded.

The stopping rule and why its false-alarm rate stays at most 5 % over all looks are in
`gate/sequential.py`; the final comparison is made at the looks' confidence (`confidence()`), so the
verdict reported is the one the rule stopped on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..gate.sequential import look_confidence, next_look
from ..options import AUTO_FIRST_LOOK, Settings

if TYPE_CHECKING:
    from ..results import CellKey, CellResult, RunResult
    from ..vocabulary import Gate
    from .core import LoadSession

AUTO_KEY = "repeats_auto"  # RunResult.extra: how the looks went


def max_looks(settings: Settings) -> int:
    """Look 1 at 2 repeats a side, one look per repeat more, the last at --llm-max-repeats."""
    return settings.max_repeats - AUTO_FIRST_LOOK + 1


def confidence(settings: Settings) -> float | None:
    """The confidence of each bound in the final comparison under `auto` (None: the fixed-repeats one)."""
    return look_confidence(max_looks(settings)) if settings.auto_repeats else None


@dataclass
class Pair:
    """What one gated comparison puts side by side: the cells of `current` against those of `baseline`."""

    current: RunResult
    baseline: RunResult
    sides: tuple[str, str]
    by_session: bool  # against a baseline of other sessions (its spread between sessions decides)


@dataclass
class Looks:
    """The record of the looks, kept in `llmload.json` (`extra.repeats_auto`) and said in the summary."""

    max_looks: int
    looks: int = 0
    stopped: str = ""
    elapsed_s: float = 0.0
    undecided: list[str] = field(default_factory=list)  # the cells still undecided when it stopped

    def to_dict(self) -> dict[str, Any]:
        return {"looks": self.looks, "max_looks": self.max_looks, "stopped": self.stopped,
                "elapsed_s": round(self.elapsed_s, 3), "undecided": self.undecided}

    def note(self) -> str:
        return (f"--llm-repeats auto: {self.looks} look(s) of at most {self.max_looks} in {self.elapsed_s:.0f} s; "
                f"{self.stopped}")


def undecided(pairs: Sequence[Pair], gates: Sequence[Gate], look: int,
              most: int) -> tuple[list[CellKey], list[CellKey]]:
    """(cells to measure again, cells not concluded) at this look: a cell is measured again when the rule
    says so for some gate and pair; it is not concluded while some gate's verdict is not conclusive (at
    the last look nothing is measured again, and what is inconclusive stays so)."""
    again: list[CellKey] = []
    open_: list[CellKey] = []
    for pair in pairs:
        base = _by_key(pair.baseline)
        for key, cells in _by_key(pair.current).items():
            if key not in base:
                continue
            decisions = [next_look(cells, base[key], g, look, most, sides=pair.sides, by_session=pair.by_session)
                         for g in gates if not g.run_level]
            if any(not d.stop for d in decisions) and key not in again:
                again.append(key)
            if any(not d.conclusive for d in decisions) and key not in open_:
                open_.append(key)
    return again, open_


def _by_key(run: RunResult) -> dict[CellKey, list[CellResult]]:
    out: dict[CellKey, list[CellResult]] = {}
    for cell in run.cells:
        out.setdefault(cell.key, []).append(cell)
    return out


def block_estimate(load: LoadSession, keys: Sequence[CellKey]) -> float:
    """Seconds the next look's block should take, from what was measured: each side's last repeat of each
    cell, and when the sides take turns, a start of each server (its last start time) with its warm-up
    runs (`--llm-warmup cell`)."""
    from .side import STARTS_KEY

    total = 0.0
    for side in load.sides:
        cells = [c for k in keys if (c := _last(side.run, k)) is not None]
        durations = sum(c.stats.duration_s for c in cells if c.stats is not None)
        total += durations
        if load.ab_mode == "alternate":
            starts = side.run.extra.get(STARTS_KEY) or []
            total += float((starts[-1].get("startup_s") or 0.0) if starts else 0.0)
            total += durations if side.settings.effective_warmup == "cell" else 0.0
    return total


def _last(run: RunResult, key: CellKey) -> CellResult | None:
    repeats = run.repeats_of(key)
    return repeats[-1] if repeats else None


def repeat_until_conclusive(load: LoadSession, pairs: Callable[[], Sequence[Pair]], gates: Sequence[Gate],
                            clock: Callable[[], float] = time.monotonic) -> Looks:
    """Look, then measure one more repeat a side of the undecided cells, until the rule stops. The budget
    counts from here; a block is not started when it would not end in time (its duration estimated from
    the last block, or before the first one from the cells' last repeats and the servers' starts)."""
    s = load.settings
    record = Looks(max_looks(s))
    started = clock()
    block_s = 0.0
    while True:
        keys, open_ = undecided(pairs(), gates, record.looks + 1, record.max_looks)
        record.looks += 1
        record.elapsed_s = clock() - started
        record.undecided = [k.label for k in open_]
        if not keys:
            if not open_:
                record.stopped = "every gated verdict is conclusive"
            elif record.looks >= record.max_looks:
                record.stopped = f"--llm-max-repeats {s.max_repeats} reached: {len(open_)} cell(s) inconclusive"
            else:
                record.stopped = (f"{len(open_)} cell(s) not conclusive where more repeats cannot decide (a "
                                  "failed cell, or a baseline whose spread between sessions decides)")
            break
        if record.elapsed_s + max(block_s, block_estimate(load, keys)) > 60.0 * s.gate_budget:
            record.stopped = (f"--llm-gate-budget {s.gate_budget:g} min spent: {len(open_)} cell(s) still "
                              "inconclusive")
            break
        before = clock()
        load.measure_more(keys)
        block_s = clock() - before
    return record
