"""Baselines: save a run, compare a later run against it, and decide per cell whether it regressed.

A gate such as ``e2e_p95:10%`` says "the cell's E2E p95 must not get worse by more than 10 %".
A cell is a *regression* only when the change is beyond the threshold with 95 % confidence: we draw
BOOTSTRAP_ROUNDS bootstrap resamples of the requests of both runs, compute the statistic on each,
and take the one-sided 95 % bounds of the relative change. Then

    lower bound  > threshold      regression    (worse by more than the threshold, surely)
    upper bound  < -threshold     improved      (better by more than the threshold, surely)
    upper bound <= threshold      ok            (surely within the threshold)
    otherwise                     inconclusive  (the interval straddles the threshold, or too few samples)

Requests are resampled as wholes (a cluster bootstrap), so the many correlated ITL gaps of one
request do not pass for independent evidence. The resampling is seeded from the gate and the cell, so
the same two runs always give the same verdicts.

"Worse" is direction-aware: for latencies (E2E, TTFT, ITL, TPOT) it is an increase, current/baseline - 1;
for throughputs (tokens/s per user, total tokens/s, requests/s) a decrease, 1 - current/baseline.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BaselineMismatchError
from ..results import CellResult, RequestRecord, RunResult
from ..vocabulary import METRICS, SCALARS, Gate, inter_token_latencies

BOOTSTRAP_ROUNDS = 2000
CONFIDENCE = 0.95  # one-sided, for each of the two decisions (regression, ok/improved)
MIN_SAMPLES = 5  # per run and cell; below that no verdict but "inconclusive"


# What identifies a deployment: runs that differ in any of these are not comparable unless forced.
LAYOUT_KEYS = ("model", "served_model_name", "tensor_parallel_size", "pipeline_parallel_size",
               "quantization", "dtype", "gpu_names")

VERDICTS = ("regression", "inconclusive", "ok", "improved")  # worst first


# -------------------------------------------------------------------------------- samples & bootstrap


def _statistic(stat: str) -> Callable[[np.ndarray], np.ndarray]:
    """Row-wise statistic of a (rounds, n) array; percentiles interpolate like metrics.percentile."""
    if stat == "mean":
        return lambda a: a.mean(axis=-1)
    q = float(stat[1:])
    return lambda a: np.percentile(a, q, axis=-1)


@dataclass(frozen=True)
class _Sample:
    """A cell's requests reduced to what one gate needs; `boot` gives the statistic of resamples."""

    n: int  # requests (the resampled units)
    point: float
    boot: Callable[[np.random.Generator, int], np.ndarray]
    n_values: int = -1  # values the statistic is taken over when not one per request (ITL gaps)

    @property
    def values(self) -> int:
        return self.n if self.n_values < 0 else self.n_values


def _sample(cell: CellResult, gate: Gate) -> _Sample:
    if gate.metric in SCALARS:
        return _scalar_sample(cell.records, gate.metric)
    ok = [r for r in cell.records if r.ok]
    if gate.metric == "itl":
        return _itl_sample(ok, str(gate.stat))
    per_request = METRICS[gate.metric].per_request
    assert per_request is not None  # scalar gates were handled above
    values = np.array([v for r in ok for v in per_request(r)], dtype=float)
    stat = _statistic(str(gate.stat))
    if values.size == 0:
        return _Sample(0, math.nan, lambda rng, b: np.full(b, math.nan))
    return _Sample(values.size, float(stat(values)),
                   lambda rng, b: stat(values[rng.integers(0, values.size, (b, values.size))]))


def _itl_sample(ok: Sequence[RequestRecord], stat: str) -> _Sample:
    gaps = [np.array(inter_token_latencies(r), dtype=float) for r in ok]
    gaps = [g for g in gaps if g.size]
    if not gaps:
        return _Sample(0, math.nan, lambda rng, b: np.full(b, math.nan))
    point = float(_statistic(stat)(np.concatenate(gaps)))
    if stat == "mean":
        sums = np.array([g.sum() for g in gaps])
        counts = np.array([g.size for g in gaps])

        def boot(rng: np.random.Generator, b: int) -> np.ndarray:
            idx = rng.integers(0, len(gaps), (b, len(gaps)))
            ratio: np.ndarray = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
            return ratio
    else:
        q = float(stat[1:])

        def boot(rng: np.random.Generator, b: int) -> np.ndarray:
            idx = rng.integers(0, len(gaps), (b, len(gaps)))
            return np.array([np.percentile(np.concatenate([gaps[i] for i in row]), q) for row in idx])

    return _Sample(len(gaps), point, boot, n_values=sum(g.size for g in gaps))


def _scalar_sample(records: Sequence[RequestRecord], metric: str) -> _Sample:
    """total tokens/s or requests/s over the cell's span; resampling requests approximates their spread."""
    if not records:
        return _Sample(0, math.nan, lambda rng, b: np.full(b, math.nan))
    start = np.array([r.start for r in records])
    end = np.array([r.end for r in records])
    ok = np.array([r.ok for r in records], dtype=float)
    amount = ok * np.array([r.output_tokens or 0 for r in records]) if metric == "total_tokens_per_s" else ok

    def value(idx: np.ndarray) -> np.ndarray:
        span = end[idx].max(axis=-1) - start[idx].min(axis=-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(span > 0, amount[idx].sum(axis=-1) / span, np.nan)

    point = float(value(np.arange(len(records))))
    return _Sample(int(ok.sum()), point, lambda rng, b: value(rng.integers(0, len(records), (b, len(records)))))


def _min_values(gate: Gate) -> int:
    """Values needed so that at least one lies above the gate's percentile (p95: 20, p99: 100)."""
    if gate.stat is None or gate.stat == "mean":
        return MIN_SAMPLES
    tail = 1.0 - float(gate.stat[1:]) / 100.0
    return max(MIN_SAMPLES, math.ceil(1.0 / tail - 1e-9))


def _too_few(cur: _Sample, base: _Sample, gate: Gate) -> str:
    """Why the samples cannot support a verdict, or "" when they can."""
    need = _min_values(gate)
    if min(cur.n, base.n) < MIN_SAMPLES or min(cur.values, base.values) < need:
        return f"too few samples: {cur.values} now, {base.values} in the baseline (need {need} for {gate.name})"
    return ""


def _worse(current: Any, baseline: Any, higher_is_better: bool) -> Any:
    """Relative change in the bad direction: +0.1 = 10 % worse (works on floats and arrays)."""
    return 1.0 - current / baseline if higher_is_better else current / baseline - 1.0


def _seed(gate: Gate, cell: CellResult) -> int:
    # crc32, not hash(): str hashes are salted per process and the verdict must be reproducible.
    return zlib.crc32(f"{gate.name}|{_key(cell)}".encode())


# ------------------------------------------------------------------------------------------ comparison


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate on one cell. Percentages are "worse by" (negative = better); the interval is None when
    the verdict is inconclusive for lack of samples."""

    gate: Gate
    verdict: str
    change_pct: float | None
    ci_low_pct: float | None
    ci_high_pct: float | None
    n_current: int
    n_baseline: int
    reason: str = ""

    def describe(self) -> str:
        """E.g. 'e2e_p95 +31.0% [+26.2%, +35.9%] > 10% regression'."""
        if self.change_pct is None:
            return f"{self.gate.name} {self.verdict} ({self.reason})"
        ci = "" if self.ci_low_pct is None else f" [{self.ci_low_pct:+.1f}%, {self.ci_high_pct:+.1f}%]"
        return f"{self.gate.name} {self.change_pct:+.1f}%{ci} vs {self.gate.threshold_pct:g}%: {self.verdict}"


def evaluate_gate(current: CellResult, baseline: CellResult, gate: Gate) -> GateResult:
    """The verdict of one gate for one cell measured in both runs."""
    if not current.ok or not baseline.ok:
        return _failed_cell_result(current, baseline, gate)
    cur, base = _sample(current, gate), _sample(baseline, gate)
    change = None if not base.point else 100.0 * _worse(cur.point, base.point, gate.higher_is_better)
    too_few = _too_few(cur, base, gate)
    if too_few or change is None or not math.isfinite(change):
        return GateResult(gate, "inconclusive", change, None, None, cur.n, base.n, too_few or "no baseline value")
    rng = np.random.default_rng(_seed(gate, current))
    with np.errstate(divide="ignore", invalid="ignore"):
        changes = 100.0 * _worse(cur.boot(rng, BOOTSTRAP_ROUNDS), base.boot(rng, BOOTSTRAP_ROUNDS),
                                 gate.higher_is_better)
    changes = changes[np.isfinite(changes)]
    lo, hi = (float(x) for x in np.percentile(changes, [100 * (1 - CONFIDENCE), 100 * CONFIDENCE]))
    verdict = _verdict(lo, hi, gate.threshold_pct)
    return GateResult(gate, verdict, change, lo, hi, cur.n, base.n,
                      "the interval straddles the threshold" if verdict == "inconclusive" else "")


def _verdict(lo: float, hi: float, threshold: float) -> str:
    if lo > threshold:
        return "regression"
    if hi < -threshold:
        return "improved"
    if hi <= threshold:
        return "ok"
    return "inconclusive"


def _failed_cell_result(current: CellResult, baseline: CellResult, gate: Gate) -> GateResult:
    n_cur, n_base = len(current.records), len(baseline.records)
    if current.ok:
        return GateResult(gate, "improved", None, None, None, n_cur, n_base, "the cell failed in the baseline")
    if baseline.ok:
        return GateResult(gate, "regression", None, None, None, n_cur, n_base,
                          f"the cell failed now: {current.error or 'no request succeeded'}")
    return GateResult(gate, "inconclusive", None, None, None, n_cur, n_base, "the cell failed in both runs")


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
    """One metric of one cell in both runs; `change_pct` is signed (current vs baseline), `worse` says
    whether that direction is bad for this metric."""

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


@dataclass(frozen=True)
class CellComparison:
    """A cell present in both runs: its deltas and the result of each gate."""

    current: CellResult
    baseline: CellResult
    deltas: tuple[Delta, ...]
    gates: tuple[GateResult, ...]

    @property
    def label(self) -> str:
        return self.current.label

    @property
    def verdict(self) -> str:
        """The worst verdict of its gates ("ok" without gates)."""
        if not self.gates:
            return "ok"
        return min((g.verdict for g in self.gates), key=VERDICTS.index)


@dataclass
class Comparison:
    """A run compared with a baseline, cell by cell."""

    cells: list[CellComparison]
    gates: list[Gate]
    only_current: list[CellResult] = field(default_factory=list)
    only_baseline: list[CellResult] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)  # layout differences, kept when forced
    baseline_name: str = "baseline"

    @property
    def regressions(self) -> list[tuple[CellComparison, GateResult]]:
        """Every (cell, gate result) whose verdict is "regression"."""
        return [(c, g) for c in self.cells for g in c.gates if g.verdict == "regression"]

    @property
    def failed(self) -> bool:
        """True when any gate found a regression in any cell."""
        return bool(self.regressions)

    def summary(self) -> str:
        """One line: how many cells compared and the verdict counts."""
        counts = {v: sum(1 for c in self.cells if c.verdict == v) for v in VERDICTS}
        parts = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
        gates = ", ".join(str(g) for g in self.gates) or "no gates"
        return f"{len(self.cells)} cells compared ({gates}): {parts or 'nothing to compare'}"


def _key(cell: CellResult) -> tuple[Any, ...]:
    return (cell.mode, cell.users, cell.prompt_tokens, cell.max_tokens, cell.rate)


def _by_key(run: RunResult) -> dict[tuple[Any, ...], CellResult]:
    # A cell measured twice: the later measurement wins, as in RunResult.cell().
    return {_key(c): c for c in run.cells}


def layout(environment: dict[str, Any]) -> dict[str, Any]:
    """The fields of an environment that identify the deployment (see LAYOUT_KEYS), where present.

    Looked up at the top level, then in a "server_args" mapping; GPU names also from a "gpus" list.
    """
    server_args = environment.get("server_args")
    nested = server_args if isinstance(server_args, dict) else {}
    out = {k: environment.get(k, nested.get(k)) for k in LAYOUT_KEYS}
    if out["gpu_names"] is None and isinstance(environment.get("gpus"), list):
        out["gpu_names"] = [g.get("name") if isinstance(g, dict) else g for g in environment["gpus"]]
    return {k: v for k, v in out.items() if v is not None}


def layout_mismatches(current: RunResult, baseline: RunResult) -> list[str]:
    """Human-readable differences of model and layout; a field known on one side only counts for `model`."""
    cur, base = layout(current.environment), layout(baseline.environment)
    out = []
    for key in LAYOUT_KEYS:
        if key in cur and key in base and cur[key] != base[key]:
            out.append(f"{key} differs: {cur[key]!r} now, {base[key]!r} in the baseline")
        elif key == "model" and (key in cur) != (key in base):
            out.append(f"model is known on one side only: {cur.get(key)!r} now, {base.get(key)!r} in the baseline")
    return out


def compare(current: RunResult, baseline: RunResult, gates: Sequence[Gate] = (), *, force: bool = False,
            baseline_name: str = "baseline") -> Comparison:
    """Compare the cells present in both runs and evaluate every gate on each.

    Raises BaselineMismatchError when model or layout differ, unless `force` (then the differences
    are listed in the comparison's rendering).
    """
    mismatches = layout_mismatches(current, baseline)
    if mismatches and not force:
        raise BaselineMismatchError(
            f"cannot compare with {baseline_name}: " + "; ".join(mismatches) + " (force the comparison to do it anyway)"
        )
    cur, base = _by_key(current), _by_key(baseline)
    cells = [_compare_cell(cur[k], base[k], gates) for k in cur if k in base]
    return Comparison(
        cells=cells,
        gates=list(gates),
        only_current=[c for k, c in cur.items() if k not in base],
        only_baseline=[c for k, c in base.items() if k not in cur],
        mismatches=mismatches,
        baseline_name=baseline_name,
    )


def _compare_cell(current: CellResult, baseline: CellResult, gates: Sequence[Gate]) -> CellComparison:
    deltas = tuple(Delta(label, m, baseline.value(m, s), current.value(m, s)) for label, m, s in DELTA_METRICS)
    return CellComparison(current, baseline, deltas, tuple(evaluate_gate(current, baseline, g) for g in gates))
