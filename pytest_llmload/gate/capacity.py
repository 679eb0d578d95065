"""The reference study's central question: how many simultaneous users meet an objective?

`find_max_users` doubles the number of users until a probe misses the objective, then bisects between
the last pass and the first miss. Noise must not make the answer flip between runs, so a probe whose
observed value lies within `margin` of a limit is repeated and judged on the median of its repeats;
if it is still that close it is *inconclusive* and the search treats it as "not shown to pass", and the
result says so instead of pretending to a precise answer.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import Inconclusive as Inconclusive  # defined there; imported from here too
from ..errors import SLOViolation
from ..results import CellResult
from ..objectives import SLO


@dataclass(frozen=True)
class Probe:
    """One number of users tried: its verdict and the cells that decided it."""

    users: int
    verdict: str  # "pass", "fail" or "inconclusive"
    cells: tuple[CellResult, ...]
    observed: dict[str, float | None]  # objective key -> median observed value (base units)
    reason: str = ""


@dataclass(frozen=True)
class CapacityResult:
    """The largest number of users shown to meet the objective, and every probe that led there."""

    slo: SLO
    prompt_tokens: int
    max_users: int  # 0 when not even the first probe passed
    first_fail: int | None  # smallest number of users shown to miss; None if none missed up to the limit
    probes: tuple[Probe, ...] = field(default=())
    limit: int = 128

    @property
    def inconclusive(self) -> tuple[int, ...]:
        """Users counts whose probe could not be called."""
        return tuple(p.users for p in self.probes if p.verdict == "inconclusive")

    def summary(self) -> str:
        lines = [f"capacity for {self.slo.describe()} at prompt_tokens={self.prompt_tokens}: "
                 f"max users {self.max_users}"
                 + (f" (first miss at {self.first_fail})" if self.first_fail else f" (no miss up to {self.limit})")]
        for p in self.probes:
            obs = ", ".join(f"{k}={_fmt(v)}" for k, v in p.observed.items())
            lines.append(f"  users={p.users:<5} {p.verdict:<12} {obs} {p.reason}".rstrip())
        return "\n".join(lines)

    def assert_at_least(self, users: int) -> None:
        """Fail (SLOViolation) if fewer than `users` were shown to hold; Inconclusive if noise decides it."""
        if self.max_users >= users:
            return
        if self.first_fail is not None and self.first_fail <= users:
            raise SLOViolation(f"expected at least {users} users, measured {self.max_users}\n{self.summary()}")
        raise Inconclusive(f"whether {users} users hold is too close to call\n{self.summary()}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def judge(slo: SLO, cells: list[CellResult], margin: float) -> tuple[str, dict[str, float | None], str]:
    """Verdict over repeated cells: medians of each objective, with a noise margin around the limits."""
    failed = [c for c in cells if not c.ok]
    if failed:
        return "fail", {}, f"cell failed: {failed[0].error}"
    cells = [c for c in cells if c.valid]  # a probe the client could not measure is no evidence either way
    if not cells:
        return "inconclusive", {}, "invalid measurement (see the cells' invalid_reasons)"
    observed: dict[str, float | None] = {}
    verdict = "pass"
    for objective in slo.all_objectives:
        values = [objective.observed(c) for c in cells]
        if any(v is None for v in values):
            observed[objective.key] = None
            return "fail", observed, f"{objective.key} not measurable"
        median = statistics.median(v for v in values if v is not None)
        observed[objective.key] = median
        headroom = objective.headroom(median)
        if objective.metric != "error_rate" and abs(headroom) <= margin:
            verdict = "inconclusive" if verdict != "fail" else verdict
        elif not objective.met_by(median):
            verdict = "fail"
    return verdict, observed, ""


def probe(run_cell: Callable[[int], CellResult], slo: SLO, users: int, *, margin: float, repeats: int) -> Probe:
    """Run one number of users; repeat while the verdict is too close to call, up to `repeats` extra times."""
    cells = [run_cell(users)]
    verdict, observed, reason = judge(slo, cells, margin)
    while verdict == "inconclusive" and len(cells) <= repeats:
        cells.append(run_cell(users))
        verdict, observed, reason = judge(slo, cells, margin)
    return Probe(users, verdict, tuple(cells), observed, reason)


def find_max_users(run_cell: Callable[[int], CellResult], slo: SLO, *, prompt_tokens: int, start: int = 1,
                   limit: int = 128, margin: float = 0.05, repeats: int = 2) -> CapacityResult:
    """Double from `start` until a probe does not pass (or `limit`), then bisect to one user."""
    probes: list[Probe] = []

    def run(users: int) -> str:
        p = probe(run_cell, slo, users, margin=margin, repeats=repeats)
        probes.append(p)
        return p.verdict

    lo, hi = 0, None  # lo: largest shown to pass; hi: smallest not shown to pass
    users = max(1, start)
    while users <= limit:  # bounded: users at least doubles each turn
        if run(users) != "pass":
            hi = users
            break
        lo = users
        users = limit if users < limit < users * 2 else users * 2
    while hi is not None and hi - lo > 1:  # bounded: the interval halves each turn
        mid = (lo + hi) // 2
        if run(mid) == "pass":
            lo = mid
        else:
            hi = mid
    first_fail = next((p.users for p in sorted(probes, key=lambda p: p.users) if p.verdict == "fail"), None)
    return CapacityResult(slo, prompt_tokens, lo, first_fail, tuple(probes), limit)
