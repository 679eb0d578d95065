"""Every cell checks itself: could the measuring client measure, or was it measuring itself?

A load client that shares a core with a busy server process, or that has more streams than one core
can read, timestamps chunks late and starts "simultaneous" requests one after another; its numbers
then describe the client. So during each cell the runner watches its own event loop:

- loop lag: a heartbeat scheduled every HEARTBEAT_S notes how late it runs. The largest lateness is
  the longest time the loop could not serve reads, so it bounds how late any chunk was timestamped;
- the loop thread's CPU time (busy share of the cell) and its run-queue wait (Linux schedstat: time
  it was ready to run but had no CPU, i.e. another process had its core);
- the start spread of the requests meant to start together (the first round of a closed-loop cell) or,
  in an open loop, how late requests went out against their schedule.

With several load workers (`shard.py`) every worker watches its own loop; `judge_cell` holds each
worker to the same rules (a cell is invalid if any worker's loop is) and the start spread across all
of them, plus, for workers on other hosts' clocks (Ray), the barrier skew and the clock uncertainty.

`judge` turns these, and what the observers found (their sections' "invalid" lists: the client-vs-server
cross-checks), into the cell's `invalid_reasons`. An invalid cell keeps its numbers for diagnosis,
but is never reported or used as a measurement.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

HEARTBEAT_S = 0.005
SPREAD_FLOOR_S = 0.050  # requests "start together" when their starts lie within max(50 ms, 5 % of E2E p50)
SPREAD_SHARE = 0.05
BUSY_LIMIT = 0.90  # a loop thread busy more than 90 % of the cell had no headroom left: saturated
MIN_BUSY_WALL_S = 0.2  # below this a cell is too short to call its client saturated


def _schedstat_wait_ns() -> int | None:
    """Nanoseconds the calling thread waited on a run queue (ready, but no CPU); None off Linux."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as fh:
            return int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True, slots=True)
class ClientCheck:
    """What the client measured of itself during one cell (the `client` section of the cell's extra)."""

    wall_s: float
    cpu_s: float  # the loop thread's CPU time
    runqueue_wait_s: float | None  # the loop thread's time ready but without a CPU
    max_loop_lag_s: float
    heartbeats: int
    start_spread_s: float  # the requests meant to start together (first round / open-loop lateness)
    cpus: tuple[int, ...]  # the CPUs the measuring thread may run on

    @property
    def busy(self) -> float:
        """Share of the cell the loop thread was on a CPU."""
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpus"] = list(self.cpus)
        d["busy"] = self.busy
        return d


class LoopMonitor:
    """Watches the running event loop from inside it, between `start()` and `stop()`."""

    def __init__(self, interval_s: float = HEARTBEAT_S) -> None:
        self.interval_s = interval_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._max_lag = 0.0
        self._beats = 0
        self._t0 = self._cpu0 = 0.0
        self._wait0: int | None = None
        self._stopped_at: tuple[float, float, int | None] | None = None

    def start(self) -> None:
        """Call from the loop's thread, right before the cell's requests go out."""
        self._loop = asyncio.get_running_loop()
        self._t0, self._cpu0, self._wait0 = time.perf_counter(), time.thread_time(), _schedstat_wait_ns()
        self._max_lag, self._beats, self._stopped_at = 0.0, 0, None
        self._schedule(self._loop.time())

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.interval_s
        self._handle = self._loop.call_at(self._due, self._beat)

    def _beat(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._max_lag = max(self._max_lag, now - self._due)
        self._beats += 1
        self._schedule(now)

    def cancel(self) -> None:
        """Stop the heartbeat (idempotent); `stop` may still be called to read what was seen."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._stopped_at = self._stopped_at or (time.perf_counter(), time.thread_time(), _schedstat_wait_ns())

    def stop(self, start_spread_s: float) -> ClientCheck:
        """Stop the heartbeat and return what was seen (call from the loop's thread)."""
        self.cancel()
        assert self._stopped_at is not None
        t1, cpu1, wait1 = self._stopped_at
        wait = None if self._wait0 is None or wait1 is None else (wait1 - self._wait0) / 1e9
        return ClientCheck(wall_s=t1 - self._t0, cpu_s=cpu1 - self._cpu0,
                           runqueue_wait_s=wait, max_loop_lag_s=self._max_lag, heartbeats=self._beats,
                           start_spread_s=start_spread_s, cpus=_affinity())


def _affinity() -> tuple[int, ...]:
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return ()


def spread_limit_s(e2e_p50_s: float | None) -> float:
    """How far apart the starts of "simultaneous" requests may lie: max(50 ms, 5 % of the E2E p50)."""
    return max(SPREAD_FLOOR_S, SPREAD_SHARE * (e2e_p50_s or 0.0))


def judge(check: ClientCheck, e2e_p50_s: float | None, observer_reasons: Sequence[str] = (),
          prompt_mismatches: int = 0, prompt_tokens: int = 0) -> tuple[str, ...]:
    """Why the cell cannot be vouched for; empty when it can (one measuring loop)."""
    return judge_cell([check], check.start_spread_s, e2e_p50_s, observer_reasons, prompt_mismatches, prompt_tokens)


def judge_cell(checks: Sequence[ClientCheck], start_spread_s: float, e2e_p50_s: float | None,
               observer_reasons: Sequence[str] = (), prompt_mismatches: int = 0, prompt_tokens: int = 0, *,
               barrier_skew_s: float | None = None, clock_uncertainty_s: float | None = None) -> tuple[str, ...]:
    """Why a cell measured by one or more load workers cannot be vouched for; empty when it can.

    `checks` are the workers' own self-checks (each must pass: a cell is invalid if any worker's is);
    `start_spread_s` is the spread of the requests meant to start together, across all workers.
    `barrier_skew_s` / `clock_uncertainty_s` (workers on their own clocks, i.e. Ray actors): how far
    apart the workers' starts lay on one clock, and how well their clock offsets are known.
    """
    limit = spread_limit_s(e2e_p50_s)
    reasons = []
    if start_spread_s > limit:
        reasons.append(f"requests did not start together: start spread {start_spread_s * 1e3:.0f} ms "
                       f"> {limit * 1e3:.0f} ms")
    if barrier_skew_s is not None and barrier_skew_s > limit:
        reasons.append(f"the load workers did not start together: their first writes lay {barrier_skew_s * 1e3:.0f} "
                       f"ms apart on one clock (> {limit * 1e3:.0f} ms)")
    if clock_uncertainty_s is not None and clock_uncertainty_s > limit:
        reasons.append(f"the load workers' clocks are known only to within {clock_uncertainty_s * 1e3:.0f} ms "
                       f"(> {limit * 1e3:.0f} ms), so their common start cannot be vouched for")
    for k, check in enumerate(checks):
        prefix = f"load worker {k}: " if len(checks) > 1 else ""
        reasons.extend(prefix + reason for reason in _loop_reasons(check, limit))
    reasons.extend(_shared_core_reasons(checks))
    if prompt_mismatches:
        reasons.append(f"{prompt_mismatches} request(s) did not carry a prompt of {prompt_tokens} tokens "
                       "(usage.prompt_tokens differs)")
    return (*reasons, *observer_reasons)


def _shared_core_reasons(checks: Sequence[ClientCheck]) -> list[str]:
    """Workers that may run only on the same CPUs (more workers than client cores) saturate them together,
    even when each loop alone looks idle enough."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, check in enumerate(checks):
        if check.cpus and check.wall_s >= MIN_BUSY_WALL_S:
            groups.setdefault(check.cpus, []).append(k)
    reasons = []
    for cpus, members in groups.items():
        busy = sum(checks[k].busy for k in members)
        if len(members) > 1 and busy > BUSY_LIMIT * len(cpus):
            reasons.append(f"load workers {', '.join(map(str, members))} share CPU(s) {','.join(map(str, cpus))} and "
                           f"kept them {busy / len(cpus):.0%} busy (> {BUSY_LIMIT:.0%}): the client was saturated; "
                           "give the client more cores or use fewer workers")
    return reasons


def _loop_reasons(check: ClientCheck, limit: float) -> list[str]:
    """What one measuring loop saw of itself that makes its timestamps doubtful."""
    reasons = []
    if check.max_loop_lag_s > limit:
        wait = "" if not check.runqueue_wait_s else (
            f"; it waited {check.runqueue_wait_s * 1e3:.0f} ms for a CPU (another process had its core)")
        reasons.append(f"the measuring event loop stalled for {check.max_loop_lag_s * 1e3:.0f} ms "
                       f"(> {limit * 1e3:.0f} ms), so chunks may be timestamped that late{wait}")
    if check.wall_s >= MIN_BUSY_WALL_S and check.busy > BUSY_LIMIT:
        reasons.append(f"the client was saturated: its event loop was busy {check.busy:.0%} of the cell "
                       f"(> {BUSY_LIMIT:.0%}); use more load workers or fewer users per core")
    return reasons
