"""Comparisons: a run against a baseline, or a candidate server against the session's own (A/B), with
per-cell deltas and, per gate, a verdict that comes from the spread *between repeats*.

A gate such as ``e2e_p95:10%`` says "the cell's E2E p95 must not get worse by more than 10 %". Each
repeat of the cell on each side gives one value of that statistic; `stats.ratio_interval` turns the two
sets into a one-sided 95 % Welch interval of current/baseline (on log values). Then

    lower bound  > threshold      regression    (worse by more than the threshold, surely)
    upper bound  < -threshold     improved      (better by more than the threshold, surely)
    upper bound <= threshold      ok            (surely within the threshold)
    otherwise                     inconclusive  (the interval straddles the threshold)

An inconclusive verdict says what would decide it: how far the bounds lie from the change, the smallest
regression these repeats could show, and the repeats a side (or baseline sessions) that would decide it
at the observed spread (`stats.repeats_needed`, `stats.sessions_needed`).

Why repeats and not the requests of one run: resampling one run's requests measures how well that run
knows its own p50, and says nothing about the next run, whose placement, caches and neighbours differ.
On a real server the run-to-run spread dominates (an unchanged CPU server read an 8-user E2E p50 of
0.42-0.83 s over nine runs), so one run against one run gives no verdict but "inconclusive".

Before any statistics, each repeat is checked:

    the cell failed (no request succeeded)     now only: regression; on both sides: invalid;
                                               before only: left out (a side left short: invalid)
    the cell is invalid (`CellResult.valid`)   left out; a side left with fewer than 2 repeats: invalid
    fewer than 2 values for a percentile       left out (a mean or p50 needs 1)

so an invalid measurement is never a reference and never a regression: its verdict is "invalid" with
the reasons. A percentile of fewer values than it resolves (p90: 10, p95: 20, p99: 100) is still the
statistic the user named, computed the same way on both sides, and the spread between repeats carries
its noise; the verdict says so ("p95 of 8 requests: near the maximum"). "Worse" is direction-aware:
for latencies an increase (current/baseline - 1), for throughputs a decrease (1 - current/baseline).
Run-level gates (`startup`, `first_ttft`) compare the values of each side's server starts the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import BaselineMismatchError
from ..results import CellKey, CellResult, RunResult
from ..vocabulary import METRICS, SCALARS, Gate, any_metric
from .provenance import LAYOUT_KEYS, Difference, differences, layout
from .stats import (CONFIDENCE, MAX_PROJECTED, MIN_REPEATS, RatioInterval, half_width, ratio_interval, repeats_needed,
                    session_interval, sessions_needed)

__all__ = ["CONFIDENCE", "DELTA_METRICS", "LAYOUT_KEYS", "MIN_REPEATS", "VERDICTS", "CellComparison", "Comparison",
           "Delta", "GateResult", "RepeatValue", "compare", "evaluate_gate", "evaluate_run_gate", "judge", "layout",
           "layout_mismatches", "repeat_value", "resolution_note", "server_starts", "valid_repeats"]

VERDICTS = ("regression", "invalid", "inconclusive", "ok", "improved")  # worst first
STARTS_KEY = "server_starts"  # RunResult.extra: one {"startup_s", "first_ttft_s"} per start of the server
SESSION_KEY = "baseline_session"  # a baseline cell's extra: the session it was measured in (0, 1, ...)


# ------------------------------------------------------------------------------------- per repeat


@dataclass(frozen=True, slots=True)
class RepeatValue:
    """One repeat's value of a gated statistic; `used` False (with `note`) when it cannot count. `count`:
    how many values the statistic was taken over (requests, or ITL gaps; 0 when not a percentile's)."""

    value: float | None
    used: bool
    note: str = ""
    invalid: bool = False
    session: int = 0  # which session of a baseline it was measured in (see gate/baseline.py)
    count: int = 0

    @property
    def failed(self) -> bool:
        """The repeat failed (no request succeeded): no value, and no measurement the tool could make."""
        return self.note.startswith("failed:")

    def show(self, metric: str) -> str:
        text = "-" if self.value is None else any_metric(metric).format(self.value)
        return text if self.used else f"({text} {self.note.split(':')[0]})"

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "used": self.used, "note": self.note, "session": self.session,
                "count": self.count}


def _quantile(gate: Gate) -> float | None:
    """The gate's percentile as a fraction (0.95 for p95); None for a mean, a p50 or a scalar."""
    if gate.stat is None or gate.stat in ("mean", "p50"):
        return None
    return float(gate.stat[1:]) / 100.0


def _min_values(gate: Gate) -> int:
    """Values a repeat needs for its statistic to count: 1 for a mean or median, 2 for a higher percentile
    (the spread between repeats carries the noise of a small sample, the same computation on both sides)."""
    return 1 if _quantile(gate) is None else 2


def _resolves(gate: Gate) -> int:
    """Values from which the percentile lies below the largest two (p90: 10, p95: 20, p99: 100)."""
    q = _quantile(gate)
    return 1 if q is None else math.ceil(1.0 / (1.0 - q) - 1e-9)


def _unit(gate: Gate, n: int) -> str:
    word = "gap" if gate.metric == "itl" else "request"
    return word if n == 1 else word + "s"


def _count(cell: CellResult, gate: Gate) -> int:
    """How many values the repeat's statistic is taken over (requests, or ITL gaps)."""
    if cell.stats is None:
        return 0
    if gate.metric in SCALARS:
        return cell.stats.requests_ok
    dist = getattr(cell.stats, gate.metric, None)
    return 0 if dist is None else int(dist.count)


def repeat_value(cell: CellResult, gate: Gate) -> RepeatValue:
    """The gate's statistic for one repeat, or why it does not count."""
    session = session_of(cell)
    if not cell.ok:
        return RepeatValue(None, False, f"failed: {_error(cell)}", session=session)
    value, have = cell.value(gate.metric, gate.stat), _count(cell, gate)
    if not cell.valid:
        return RepeatValue(value, False, "invalid: " + ("; ".join(cell.invalid_reasons) or "no reason given"),
                           invalid=True, session=session, count=have)
    need = _min_values(gate)
    if have < need:
        return RepeatValue(value, False, f"few: {have} {_unit(gate, have)}, a {gate.stat} needs {need}",
                           session=session, count=have)
    if value is None or not (value > 0 and math.isfinite(value)):
        return RepeatValue(None, False, "undefined: no value", session=session, count=have)
    return RepeatValue(value, True, session=session, count=have)


def resolution_note(gate: Gate, values: Sequence[RepeatValue]) -> str:
    """'p95 of 8 requests: near the maximum' when used repeats have fewer values than the percentile
    resolves (the statistic is then an interpolation between the two largest values); else ''."""
    counts = sorted({v.count for v in values if v.used and 0 < v.count < _resolves(gate)})
    if not counts:
        return ""
    n = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    return f"{gate.stat} of {n} {_unit(gate, counts[-1])}: near the maximum"


def _error(cell: CellResult) -> str:
    """The first line of a failed cell's error (the rest, e.g. a server log tail, is in llmload.json)."""
    return (cell.error or "no request succeeded").strip().splitlines()[0]


def session_of(cell: CellResult) -> int:
    """The baseline session a cell was measured in (0 for a run of one session)."""
    tag = cell.extra.get(SESSION_KEY) if isinstance(cell.extra, dict) else None
    return tag if isinstance(tag, int) else 0


# ------------------------------------------------------------------------------------------ verdicts


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate on one cell (or on the server start). Percentages are "worse by" (negative = better);
    the interval is None when there were too few repeats to estimate the spread between them."""

    gate: Gate
    verdict: str
    change_pct: float | None
    ci_low_pct: float | None
    ci_high_pct: float | None
    current: tuple[RepeatValue, ...]
    baseline: tuple[RepeatValue, ...]
    reason: str = ""
    confidence: float = CONFIDENCE  # of each one-sided bound (lower under repeated looks: gate/sequential.py)

    @property
    def n_current(self) -> int:
        """Repeats that count now (valid, measured)."""
        return sum(v.used for v in self.current)

    def describe(self) -> str:
        """E.g. 'e2e_p95 +31.0% [+26.2%, +35.9%] vs 10%: regression'; the reason when there is one."""
        if self.change_pct is None:
            return f"{self.gate.name} {self.verdict} ({self.reason})"
        ci = "" if self.ci_low_pct is None else f" [{self.ci_low_pct:+.1f}%, {self.ci_high_pct:+.1f}%]"
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.gate.name} {self.change_pct:+.1f}%{ci} vs {self.gate.threshold_pct:g}%: {self.verdict}{why}"

    def to_dict(self) -> dict[str, Any]:
        return {"gate": str(self.gate), "verdict": self.verdict, "change_pct": self.change_pct,
                "ci_low_pct": self.ci_low_pct, "ci_high_pct": self.ci_high_pct, "reason": self.reason,
                "confidence": self.confidence, "baseline": [v.to_dict() for v in self.baseline],
                "current": [v.to_dict() for v in self.current]}


def _worse_pct(ratio: float, higher_is_better: bool) -> float:
    """current/baseline as a change for the worse in percent: +10 = 10 % worse."""
    return 100.0 * ((1.0 - ratio) if higher_is_better else (ratio - 1.0))


def _worse_log(pct: float, higher_is_better: bool) -> float:
    """A change for the worse in percent on the log scale of the ratio, signed so that worse is positive."""
    ratio = (1.0 - pct / 100.0) if higher_is_better else (1.0 + pct / 100.0)
    if ratio <= 0:
        return math.inf
    return -math.log(ratio) if higher_is_better else math.log(ratio)


def _pct_of_worse_log(w: float, higher_is_better: bool) -> float:
    return _worse_pct(math.exp(-w) if higher_is_better else math.exp(w), higher_is_better)


def _geometric_mean(values: Sequence[float]) -> float:
    return math.exp(math.fsum(math.log(v) for v in values) / len(values))


def judge(gate: Gate, current: Sequence[RepeatValue], baseline: Sequence[RepeatValue],
          sides: tuple[str, str] = ("now", "in the baseline"), by_session: bool = False,
          confidence: float = CONFIDENCE) -> GateResult:
    """The verdict of a gate from per-repeat values of both sides (failed repeats handled by the caller).

    `by_session`: the baseline was measured in other sessions, so the spread that counts is the one
    between its sessions (`stats.session_interval`); else the two sides ran in one session (A/B) and
    the spread between repeats counts (`stats.ratio_interval`). `confidence`: of each one-sided bound."""
    cur, base = tuple(current), tuple(baseline)
    used_c = [v.value for v in cur if v.used and v.value is not None]
    used_b = [v.value for v in base if v.used and v.value is not None]
    change = None
    if used_c and used_b:
        change = _worse_pct(_geometric_mean(used_c) / _geometric_mean(used_b), gate.higher_is_better)
    if by_session:
        interval = session_interval(used_c, list(_sessions(base).values()), confidence)
    else:
        interval = ratio_interval(used_c, used_b, confidence)
    resolution = resolution_note(gate, cur + base)
    if interval is None:
        verdict, reason = _too_few(cur, base, sides, by_session)
        reason = "; ".join(filter(None, (reason, resolution)))
        return GateResult(gate, verdict, change, None, None, cur, base, reason, confidence)
    bounds = sorted((_worse_pct(interval.low, gate.higher_is_better), _worse_pct(interval.high, gate.higher_is_better)))
    verdict = _verdict(bounds[0], bounds[1], gate.threshold_pct)
    notes = [f"{_of(n, len(vals))} {side} left out: {note}" for side, vals in zip(sides, (cur, base))
             for n, note in _left_out(vals)]
    if verdict == "inconclusive":
        notes.insert(0, _undecided(gate, interval, used_c, used_b, base, by_session, confidence))
    notes.append(resolution)
    return GateResult(gate, verdict, change, bounds[0], bounds[1], cur, base, "; ".join(filter(None, notes)),
                      confidence)


def _of(n: int, total: int) -> str:
    """'1 repeat of 3', '2 repeats of 3'."""
    return f"{n} repeat{'' if n == 1 else 's'} of {total}"


def _undecided(gate: Gate, interval: RatioInterval, used_c: Sequence[float], used_b: Sequence[float],
               base: Sequence[RepeatValue], by_session: bool, confidence: float) -> str:
    """Why an interval that straddles the threshold decides nothing, and what would decide it: how far
    its bounds lie from the change, the smallest regression these data could show, and the repeats (or
    baseline sessions) that would decide it at the observed spread and change."""
    hib, h = gate.higher_is_better, half_width(interval)
    threshold = _worse_log(gate.threshold_pct, hib)
    text = f"the interval straddles {gate.threshold_pct:g}%"
    if not math.isfinite(threshold):
        return text
    change = -math.log(interval.ratio) if hib else math.log(interval.ratio)
    smallest = _pct_of_worse_log(threshold + h, hib)
    who = "this baseline" if by_session else "these repeats"
    text += (f": its bounds lie ±{100.0 * math.expm1(h):.1f}% from the change, so the smallest regression "
             f"{who} could show is {smallest:+.1f}%")
    margin = abs(change - threshold)
    if by_session:
        sessions = list(_sessions(base).values())
        n = sessions_needed(sessions, margin, confidence)
        if n is None:
            return text + ("; no number of baseline sessions would decide it at this spread between sessions: "
                           "compare A/B in one session, or widen the threshold")
        return text + (f"; a baseline of about {max(n, len(sessions) + 1)} sessions would decide it at this spread "
                       "between sessions (--llm-save-baseline in more sessions)")
    n = repeats_needed(used_c, used_b, margin, confidence)
    if n is None:
        return text + (f"; more than {MAX_PROJECTED} repeats a side would be needed at this spread: the change "
                       "lies too close to the threshold to decide (widen the threshold)")
    n = max(n, min(len(used_c), len(used_b)) + 1)
    return text + f"; about {n} repeats a side would decide it at this spread (--llm-repeats {n})"


def _left_out(values: Sequence[RepeatValue]) -> list[tuple[int, str]]:
    notes: dict[str, int] = {}
    for v in values:
        if not v.used:
            notes[v.note] = notes.get(v.note, 0) + 1
    return [(n, note) for note, n in notes.items()]


def _sessions(values: Sequence[RepeatValue]) -> dict[int, list[float]]:
    """The usable values of each baseline session."""
    out: dict[int, list[float]] = {}
    for v in values:
        if v.used and v.value is not None:
            out.setdefault(v.session, []).append(v.value)
    return out


def _too_few(cur: Sequence[RepeatValue], base: Sequence[RepeatValue], sides: tuple[str, str],
             by_session: bool = False) -> tuple[str, str]:
    """'invalid' when invalid or failed repeats left a side short, else 'inconclusive'; with the reason."""
    usable_now = sum(v.used for v in cur)
    short_now = usable_now < (1 if by_session else MIN_REPEATS)
    short_before = (len(_sessions(base)) if by_session else sum(v.used for v in base)) < MIN_REPEATS
    unmeasured = [(f"invalid measurement {side}: {v.note.removeprefix('invalid: ')}" if v.invalid
                   else f"failed {side}: {v.note.removeprefix('failed: ')}")
                  for side, vals, short in zip(sides, (cur, base), (short_now, short_before)) if short
                  for v in vals if v.invalid or v.failed]
    if unmeasured and (short_now or not by_session or not _sessions(base)):
        return "invalid", "; ".join(dict.fromkeys(unmeasured)) + " (never used as a reference or a regression)"
    left_out = [f"{note}" for vals in (cur, base) for _, note in _left_out(vals)]
    tail = f"; left out: {'; '.join(dict.fromkeys(left_out))}" if left_out else ""
    if by_session and not short_now:
        return "inconclusive", (f"the baseline holds {len(_sessions(base))} session(s) of this cell: the spread "
                                f"between sessions needs {MIN_REPEATS} (save the baseline into the same file in "
                                f"another session to add one, or compare A/B in one session){tail}")
    counts = ", ".join(f"{sum(v.used for v in vals)} usable of {len(vals)} {side}"
                       for side, vals in zip(sides, (cur, base)))
    return "inconclusive", (f"repeats: {counts}: the spread between runs needs {MIN_REPEATS} on each side "
                            f"(--llm-repeats){tail}")


def _verdict(lo: float, hi: float, threshold: float) -> str:
    if lo > threshold:
        return "regression"
    if hi < -threshold:
        return "improved"
    if hi <= threshold:
        return "ok"
    return "inconclusive"


def evaluate_gate(current: Sequence[CellResult], baseline: Sequence[CellResult], gate: Gate,
                  sides: tuple[str, str] = ("now", "in the baseline"), by_session: bool = False,
                  confidence: float = CONFIDENCE) -> GateResult:
    """The verdict of one gate for one cell, from its repeats on both sides.

    A failure (no request succeeded) is a measurement of the server, not noise: failed repeats on one side
    only are a regression (now) or leave the baseline's other repeats to decide (before; invalid when
    none is left); failures on both sides leave nothing to compare with: invalid."""
    cur = tuple(repeat_value(c, gate) for c in current)
    base = tuple(repeat_value(c, gate) for c in baseline)
    failed_now = [c for c in current if not c.ok]
    failed_before = [c for c in baseline if not c.ok]

    def failures(side: str, failed: Sequence[CellResult], total: int) -> str:
        return f"{len(failed)} of {total} repeat(s) failed {side} ({_error(failed[0])})"

    if failed_now and failed_before:
        return GateResult(gate, "invalid", None, None, None, cur, base,
                          f"the cell failed on both sides: {failures(sides[0], failed_now, len(current))}, "
                          f"{failures(sides[1], failed_before, len(baseline))}: neither side can be compared",
                          confidence)
    if failed_now:
        error = _error(failed_now[0])
        return GateResult(gate, "regression", None, None, None, cur, base,
                          f"the cell failed {sides[0]} in {len(failed_now)} of {len(current)} repeat(s): {error}",
                          confidence)
    return judge(gate, cur, base, sides, by_session, confidence)


def server_starts(run: RunResult) -> list[dict[str, Any]]:
    """The run's server starts: [{"startup_s": ..., "first_ttft_s": ...}, ...] (empty when none recorded)."""
    starts = run.extra.get(STARTS_KEY) if isinstance(run.extra, dict) else None
    return [s for s in starts if isinstance(s, dict)] if isinstance(starts, list) else []


def evaluate_run_gate(current: RunResult, baseline: RunResult, gate: Gate,
                      sides: tuple[str, str] = ("now", "in the baseline"),
                      confidence: float = CONFIDENCE) -> GateResult:
    """A run-level gate (`startup`, `first_ttft`) over the server starts of both sides."""
    key = any_metric(gate.metric).key

    def values(run: RunResult) -> tuple[RepeatValue, ...]:
        out = []
        for start in server_starts(run):
            v = start.get(key)
            if isinstance(v, (int, float)) and v > 0:
                out.append(RepeatValue(float(v), True))
            else:
                out.append(RepeatValue(None, False, "undefined: not measured"))
        return tuple(out)

    cur, base = values(current), values(baseline)
    if not cur or not base:
        missing = " and ".join(side for side, vals in zip(sides, (cur, base)) if not vals)
        return GateResult(gate, "inconclusive", None, None, None, cur, base,
                          f"no server start measured {missing} (attached servers have none)", confidence)
    return judge(gate, cur, base, sides, confidence=confidence)


# ------------------------------------------------------------------------------------------ deltas

# (label, metric, stat) of the deltas every comparison shows.
DELTA_METRICS: tuple[tuple[str, str, str | None], ...] = (
    ("E2E mean", "e2e", "mean"),
    ("E2E p95", "e2e", "p95"),
    ("TTFT p50", "ttft", "p50"),
    ("TTFT p95", "ttft", "p95"),
    ("TPOT mean", "tpot", "mean"),
    ("tok/s/user", "tokens_per_s_per_user", "mean"),
    ("total tok/s", "total_tokens_per_s", None),
)


@dataclass(frozen=True, slots=True)
class Delta:
    """One metric of one cell on both sides (the mean over the repeats that count); `change_pct` is
    signed (current vs baseline), `worse` says whether that direction is bad for this metric."""

    label: str
    metric: str
    baseline: float | None
    current: float | None

    @property
    def change(self) -> float | None:
        return None if self.baseline is None or self.current is None else self.current - self.baseline

    @property
    def change_pct(self) -> float | None:
        if self.change is None or not self.baseline:
            return None
        return 100.0 * self.change / self.baseline

    @property
    def worse(self) -> bool:
        c = self.change
        return c is not None and (c < 0 if METRICS[self.metric].higher_is_better else c > 0)


def _mean_value(cells: Sequence[CellResult], metric: str, stat: str | None) -> float | None:
    values = [v for c in cells if c.ok and c.valid and (v := c.value(metric, stat)) is not None]
    return math.fsum(values) / len(values) if values else None


# -------------------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class CellComparison:
    """A cell measured on both sides: its repeats, deltas and the result of each gate."""

    current: tuple[CellResult, ...]
    baseline: tuple[CellResult, ...]
    deltas: tuple[Delta, ...]
    gates: tuple[GateResult, ...]

    @property
    def cell(self) -> CellResult:
        """The first repeat measured now (for its users, prompt size, mode)."""
        return self.current[0]

    @property
    def label(self) -> str:
        return self.cell.label

    @property
    def verdict(self) -> str:
        """The worst verdict of its gates ("ok" without gates)."""
        if not self.gates:
            return "ok"
        return min((g.verdict for g in self.gates), key=VERDICTS.index)

    def to_dict(self) -> dict[str, Any]:
        c = self.cell
        return {"label": c.label, "users": c.users, "prompt_tokens": c.prompt_tokens, "max_tokens": c.max_tokens,
                "mode": c.mode, "rate": c.rate, "verdict": self.verdict,
                "repeats": {"current": len(self.current), "baseline": len(self.baseline),
                            "current_valid": valid_repeats(self.current),
                            "baseline_valid": valid_repeats(self.baseline)},
                "deltas": [{"label": d.label, "metric": d.metric, "baseline": d.baseline, "current": d.current,
                            "change_pct": d.change_pct} for d in self.deltas],
                "gates": [g.to_dict() for g in self.gates]}


@dataclass
class Comparison:
    """One run compared with another, cell by cell: a baseline (kind "baseline") or, in an A/B session,
    the candidate B against the session's own server A (kind "candidate")."""

    cells: list[CellComparison]
    gates: list[Gate]
    only_current: list[CellResult] = field(default_factory=list)
    only_baseline: list[CellResult] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    run_gates: list[GateResult] = field(default_factory=list)
    baseline_name: str = "baseline"
    current_name: str = "this run"
    kind: str = "baseline"
    forced: bool = False
    sides: tuple[str, str] = ("now", "in the baseline")
    confidence: float = CONFIDENCE  # of each one-sided bound (lower under --llm-repeats auto's looks)

    @property
    def mismatches(self) -> list[str]:
        """The deployment differences that were compared anyway (forced)."""
        return [d.describe(*self.sides) for d in self.differences if d.deployment] if self.forced else []

    def _results(self) -> list[tuple[str, GateResult]]:
        return [(c.label, g) for c in self.cells for g in c.gates] + [("server start", g) for g in self.run_gates]

    def with_verdict(self, verdict: str) -> list[tuple[str, GateResult]]:
        """(cell label or "server start", gate result) of every gate with this verdict."""
        return [(label, g) for label, g in self._results() if g.verdict == verdict]

    @property
    def regressions(self) -> list[tuple[CellComparison, GateResult]]:
        """Every (cell, gate result) whose verdict is "regression"."""
        return [(c, g) for c in self.cells for g in c.gates if g.verdict == "regression"]

    @property
    def failed(self) -> bool:
        """True when any gate found a regression (a cell's or the server start's)."""
        return bool(self.with_verdict("regression"))

    def problems(self, strict: bool = False, allow_invalid: bool = False) -> list[str]:
        """What fails the session: regressions, invalid measurements (unless `allow_invalid`: then they are
        reported, not failed), and inconclusive verdicts when `strict`."""
        failing = ("regression",) + (() if allow_invalid else ("invalid",)) + (("inconclusive",) if strict else ())
        return [f"{self.current_name} vs {self.baseline_name}: {label}: {g.describe()}"
                for label, g in self._results() if g.verdict in failing]

    def summary(self) -> str:
        """One line: how many cells compared, the verdict counts and the repeats."""
        counts = {v: sum(1 for c in self.cells if c.verdict == v) for v in VERDICTS}
        parts = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        gates = ", ".join(str(g) for g in self.gates) or "no gates"
        reps = (f"; valid repeats: {_counts([c.current for c in self.cells])} {self.sides[0]}, "
                f"{_counts([c.baseline for c in self.cells])} {self.sides[1]}" if self.cells else "")
        return f"{len(self.cells)} cells compared ({gates}): {parts or 'nothing to compare'}{reps}"

    def to_dict(self) -> dict[str, Any]:
        """The comparison as llmload.json carries it (`extra.comparisons`)."""
        return {
            "kind": self.kind, "baseline_name": self.baseline_name, "current_name": self.current_name,
            "sides": list(self.sides), "gates": [str(g) for g in self.gates], "summary": self.summary(),
            "failed": self.failed, "forced": self.forced, "confidence": self.confidence,
            "differences": [d.to_dict() for d in self.differences],
            "cells": [c.to_dict() for c in self.cells],
            "run_gates": [g.to_dict() for g in self.run_gates],
            "only_current": [c.label for c in self.only_current],
            "only_baseline": [c.label for c in self.only_baseline],
        }


def valid_repeats(cells: Sequence[CellResult]) -> int:
    """Repeats that measured (ok) and that the tool can vouch for (valid)."""
    return sum(c.ok and c.valid for c in cells)


def _counts(sides: Sequence[Sequence[CellResult]]) -> str:
    """'3 of 3', or '1 of 3 / 3 of 3' when cells differ: valid repeats of those measured."""
    return " / ".join(dict.fromkeys(f"{valid_repeats(cells)} of {len(cells)}" for cells in sides))


def repeats_by_key(run: RunResult) -> dict[CellKey, list[CellResult]]:
    """Every measurement of each cell, in the order measured: the repeats of the cell."""
    out: dict[CellKey, list[CellResult]] = {}
    for c in run.cells:
        out.setdefault(c.key, []).append(c)
    return out


def layout_mismatches(current: RunResult, baseline: RunResult) -> list[str]:
    """Human-readable deployment differences (model, weights, layout, hardware, workload)."""
    return [d.describe() for d in differences(current.environment, baseline.environment) if d.deployment]


def compare(current: RunResult, baseline: RunResult, gates: Sequence[Gate] = (), *, force: bool = False,
            baseline_name: str = "baseline", current_name: str = "this run", kind: str = "baseline",
            sides: tuple[str, str] = ("now", "in the baseline"), confidence: float = CONFIDENCE) -> Comparison:
    """Compare the cells present in both runs (all their repeats) and evaluate every gate on each.

    A baseline comparison (`kind="baseline"`) raises BaselineMismatchError naming every deployment
    difference, unless `force` (then they are listed in the comparison). An A/B comparison
    (`kind="candidate"`) refuses nothing: the candidate is meant to differ; the differences are listed.
    `confidence`: of each one-sided bound (`sequential.look_confidence` after repeated looks).
    """
    diffs = differences(current.environment, baseline.environment)
    deployment = [d for d in diffs if d.deployment]
    if kind == "baseline" and deployment and not force:
        raise BaselineMismatchError(
            f"cannot compare with {baseline_name}: " + "; ".join(d.describe(*sides) for d in deployment)
            + " (--llm-compare-force compares anyway)")
    cur, base = repeats_by_key(current), repeats_by_key(baseline)
    cell_gates = [g for g in gates if not g.run_level]
    by_session = kind == "baseline"  # a baseline ran in other sessions; A/B ran in this one
    cells = [_compare_cell(cur[k], base[k], cell_gates, sides, by_session, confidence) for k in cur if k in base]
    return Comparison(
        cells=cells, gates=list(gates),
        only_current=[c[0] for k, c in cur.items() if k not in base],
        only_baseline=[c[0] for k, c in base.items() if k not in cur],
        differences=diffs,
        run_gates=[evaluate_run_gate(current, baseline, g, sides, confidence) for g in gates if g.run_level],
        baseline_name=baseline_name, current_name=current_name, kind=kind,
        forced=bool(force and deployment and kind == "baseline"), sides=sides, confidence=confidence,
    )


def _compare_cell(current: Sequence[CellResult], baseline: Sequence[CellResult], gates: Sequence[Gate],
                  sides: tuple[str, str], by_session: bool, confidence: float = CONFIDENCE) -> CellComparison:
    deltas = tuple(Delta(label, m, _mean_value(baseline, m, s), _mean_value(current, m, s))
                   for label, m, s in DELTA_METRICS)
    return CellComparison(tuple(current), tuple(baseline), deltas,
                          tuple(evaluate_gate(current, baseline, g, sides, by_session, confidence) for g in gates))
