"""A stopping rule for `--llm-repeats auto`: look at a gated cell after every interleaved block of
repeats, and stop as soon as its verdict is conclusive, or when the looks are spent.

Looking again and again at a test made at 95 % raises its false-alarm rate: each look is one more
chance for the noise to cross the threshold (in the simulation of `tests/unit/test_sequential.py`, eight
looks at 95 % called a change exactly at the threshold a regression in 12 % of sessions, against 5 % for
one look). So each look spends part of the 5 % (Bonferroni, an alpha-spending rule with equal shares):

    alpha per look = 0.05 / max_looks        each one-sided bound at confidence 1 - alpha per look

and by the union bound, the chance that *any* look calls a false regression (or a false "ok") stays
at most 5 % over all looks, whichever look stops. With this rule the same simulation reads 2 %, and
finds a 20 % change against a 5 % gate (per-repeat sigma 0.05) in nearly every session, after 3.5 looks
on average; a doubled latency at the first or second look. (Spending less on the first looks, where two
repeats decide only large changes, would buy a little power later; equal shares are the simplest rule
that holds.) The verdict a session reports after stopping is the one at the look's confidence
(`Decision.result`), never a 95 % verdict of the same data.

A look is one more interleaved block (A B or B A: one repeat more a side); the first look needs 2
repeats a side. Against a baseline saved in other sessions, more repeats now do not narrow the interval
(the spread between the baseline's sessions decides it), so a baseline comparison stops at the first look
that has an interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..results import CellResult
from ..vocabulary import Gate
from .compare import GateResult, RepeatValue, evaluate_gate, judge
from .stats import CONFIDENCE

__all__ = ["ALPHA", "Decision", "judge_look", "look_alpha", "look_confidence", "next_look"]

ALPHA = 1.0 - CONFIDENCE  # the false-alarm rate over all looks


def look_alpha(max_looks: int, alpha: float = ALPHA) -> float:
    """The one-sided alpha each look may spend: `alpha / max_looks` (Bonferroni)."""
    if max_looks < 1:
        raise ValueError("max_looks must be at least 1")
    return alpha / max_looks


def look_confidence(max_looks: int, alpha: float = ALPHA) -> float:
    """The confidence of each one-sided bound at every look (`compare(..., confidence=...)`)."""
    return 1.0 - look_alpha(max_looks, alpha)


@dataclass(frozen=True, slots=True)
class Decision:
    """What one look says about one gated cell: stop (with the verdict to report) or measure a block more."""

    stop: bool
    result: GateResult  # the verdict at this look's confidence: the one to report when `stop`
    look: int
    max_looks: int
    alpha: float  # the one-sided alpha this look spent
    reason: str

    @property
    def verdict(self) -> str:
        return self.result.verdict

    @property
    def conclusive(self) -> bool:
        """The gate decided (regression, improved, ok; or a failure or invalid measurement that stays so)."""
        return self.stop and self.result.verdict != "inconclusive"


def next_look(current: Sequence[CellResult], baseline: Sequence[CellResult], gate: Gate, look: int, max_looks: int,
              *, sides: tuple[str, str] = ("now", "in the baseline"), by_session: bool = False,
              alpha: float = ALPHA) -> Decision:
    """After look `look` (1-based) of at most `max_looks`: the cell's repeats on both sides so far (the
    candidate's as `current`, A's or the baseline's as `baseline`) decide whether to stop."""
    _check(look, max_looks)
    result = evaluate_gate(current, baseline, gate, sides, by_session, look_confidence(max_looks, alpha))
    failed = any(not c.ok for c in (*current, *baseline))
    return _decide(result, look, max_looks, alpha, by_session, failed)


def judge_look(current: Sequence[RepeatValue], baseline: Sequence[RepeatValue], gate: Gate, look: int,
               max_looks: int, *, sides: tuple[str, str] = ("now", "in the baseline"), by_session: bool = False,
               alpha: float = ALPHA) -> Decision:
    """`next_look` from per-repeat values (no failed repeats among them): what the simulations use."""
    _check(look, max_looks)
    result = judge(gate, current, baseline, sides, by_session, look_confidence(max_looks, alpha))
    return _decide(result, look, max_looks, alpha, by_session, failed=False)


def _check(look: int, max_looks: int) -> None:
    if not 1 <= look <= max_looks:
        raise ValueError(f"look {look} is outside 1..{max_looks}")


def _decide(result: GateResult, look: int, max_looks: int, alpha: float, by_session: bool, failed: bool) -> Decision:
    spent = look_alpha(max_looks, alpha)
    where = f"look {look} of {max_looks} (each at {100.0 * (1.0 - spent):.2f}%)"

    def decision(stop: bool, why: str) -> Decision:
        return Decision(stop, result, look, max_looks, spent, f"{where}: {why}")

    if result.verdict in ("regression", "improved", "ok"):
        return decision(True, f"{result.verdict}: conclusive")
    if result.verdict == "invalid" and failed:
        return decision(True, "the cell failed: more repeats do not make it comparable")
    if look >= max_looks:
        return decision(True, f"{result.verdict} after the last look: the repeats are spent")
    if by_session and result.ci_low_pct is not None:
        return decision(True, "against a baseline the spread between its sessions decides: "
                              "more repeats now do not narrow the interval")
    return decision(False, f"{result.verdict}: measure another block")
