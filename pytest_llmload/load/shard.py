"""A cell split into shards, one per load worker, and the shards' records merged back into one cell.

Pure functions and plain data (everything here pickles, so it crosses process and Ray boundaries):

- `plan_shards`: a closed-loop cell's users, or an open-loop cell's arrival schedule, dealt round-robin
  over K workers. A user keeps all its rounds on one worker (they run one after another); request
  indices stay the cell's own (`round * users + user`, or the arrival's position), so records from
  different workers never collide.
- `merge_outcomes`: the workers' raw records into one tuple sorted by index, checked to hold every
  request of the cell exactly once. Statistics are then computed once over all records
  (`metrics.cell_stats`): percentiles of the whole cell, never a percentile of percentiles.

Every worker times its requests on its own CLOCK_MONOTONIC relative to the start barrier, its `t0`
(one shared instant for the processes of one host; the same wall-clock instant for Ray actors on other
hosts), so merged record times are all relative to the one start of the cell.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..results import CellSpec, RequestRecord
from .client import Endpoint
from .selfcheck import ClientCheck
from .workload import Prompt


@dataclass(frozen=True)
class ShardJob:
    """What one worker runs of a cell: its users (closed loop) or its arrivals (open loop), with prompts."""

    worker: int
    spec: CellSpec
    endpoint: Endpoint
    api: str
    model: str
    request_timeout_s: float
    users: tuple[int, ...] = ()  # closed loop: the cell's user numbers this worker plays
    arrivals: tuple[tuple[int, float], ...] = ()  # open loop: (request index, scheduled start after t0)
    prompts: dict[int, Prompt] = field(default_factory=dict)  # by request index, this shard's only
    # Conversations and closed-loop replays: sequences of request indices, each sent in order by one user
    # (`slots` users at once take the next sequence when theirs ends); `history`: each turn sends the
    # conversation so far (chat).
    sequences: tuple[tuple[int, ...], ...] = ()
    slots: int = 0
    history: bool = False
    max_tokens: dict[int, int] = field(default_factory=dict)  # by request index, where not spec.max_tokens
    meta: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)  # index -> (conversation, turn)

    @property
    def requests(self) -> int:
        if self.sequences:
            return sum(len(s) for s in self.sequences)
        return len(self.arrivals) if self.spec.mode == "open" else len(self.users) * self.spec.rounds

    @property
    def indices(self) -> list[int]:
        """The cell's request indices this shard runs."""
        if self.sequences:
            return sorted(i for s in self.sequences for i in s)
        if self.spec.mode == "open":
            return [i for i, _ in self.arrivals]
        return [r * self.spec.users + u for r in range(self.spec.rounds) for u in self.users]


@dataclass(frozen=True)
class ShardOutcome:
    """One worker's part of a cell once it ended: raw records (relative to its t0) and its self-check."""

    worker: int
    records: tuple[RequestRecord, ...]
    t0: float  # the worker's CLOCK_MONOTONIC (perf_counter) instant of the start barrier
    t0_unix_ns: int  # the worker's wall clock at t0
    check: ClientCheck
    first_write_s: float | None  # the worker's first request write after t0 (how late it started)
    lost_connection: bool  # a request failed to connect or was cut mid-stream (a dying server does that)
    pid: int = 0
    host: str = ""

    @property
    def start_unix_ns(self) -> int | None:
        """The worker's wall clock at its first write: where the barrier put it, as its own clock says."""
        return None if self.first_write_s is None else self.t0_unix_ns + round(self.first_write_s * 1e9)


@dataclass(frozen=True)
class RequestPlan:
    """What a workload adds to a cell's prompts: per-request output sizes and (conversation, turn), and
    for a closed loop the sequences users send in order (see `ShardJob`)."""

    max_tokens: Sequence[int] | None = None
    meta: Sequence[tuple[int | None, int | None]] | None = None
    sequences: Sequence[Sequence[int]] | None = None
    history: bool = False


def plan_shards(spec: CellSpec, prompts: Sequence[Prompt], arrivals: Sequence[float] | None, workers: int, *,
                endpoint: Endpoint, api: str, model: str, request_timeout_s: float,
                plan: RequestPlan | None = None) -> list[ShardJob]:
    """Deal the cell over at most `workers` shards (round-robin); shards with nothing to run are left out."""
    if workers < 1:
        raise ValueError("a cell needs at least one worker")
    plan = plan or RequestPlan()
    common: dict[str, Any] = dict(spec=spec, endpoint=endpoint, api=api, model=model,
                                  request_timeout_s=request_timeout_s, history=plan.history)

    def per_request(indices: Sequence[int]) -> dict[str, Any]:
        return {"prompts": {i: prompts[i] for i in indices},
                "max_tokens": {} if plan.max_tokens is None else {i: plan.max_tokens[i] for i in indices},
                "meta": {} if plan.meta is None else {i: plan.meta[i] for i in indices}}

    jobs: list[ShardJob] = []
    if arrivals is not None:
        for k in range(min(workers, len(arrivals))):
            mine = tuple((i, arrivals[i]) for i in range(k, len(arrivals), workers))
            jobs.append(ShardJob(worker=k, arrivals=mine, **per_request([i for i, _ in mine]), **common))
        return jobs
    if plan.sequences is not None:
        for k in range(min(workers, spec.users, len(plan.sequences))):
            seqs = tuple(tuple(q) for q in plan.sequences[k::workers])
            slots = len(range(k, spec.users, workers))
            jobs.append(ShardJob(worker=k, users=tuple(range(k, spec.users, workers)), sequences=seqs, slots=slots,
                                 **per_request([i for q in seqs for i in q]), **common))
        return jobs
    for k in range(min(workers, spec.users)):
        users = tuple(range(k, spec.users, workers))
        indices = (r * spec.users + u for r in range(spec.rounds) for u in users)
        jobs.append(ShardJob(worker=k, users=users, prompts={i: prompts[i] for i in indices}, **common))
    return jobs


@dataclass(frozen=True)
class MergedCell:
    """The workers' outcomes as one cell: records by index, the start checks across workers."""

    records: tuple[RequestRecord, ...]
    outcomes: tuple[ShardOutcome, ...]
    start_spread_s: float  # the requests meant to start together, across all workers
    barrier_skew_s: float | None  # how far apart the workers' first writes lay (None: one worker)

    @property
    def lost_connection(self) -> bool:
        return any(o.lost_connection for o in self.outcomes)


def merge_outcomes(outcomes: Sequence[ShardOutcome], spec: CellSpec, arrivals: Sequence[float] | None,
                   expected: int, clock_offsets_ns: dict[int, int] | None = None) -> MergedCell:
    """One cell from the workers' outcomes; ValueError when a request is missing or recorded twice.

    `clock_offsets_ns` (Ray): each worker's wall clock minus the coordinator's, so that the barrier skew
    compares the workers' starts on one clock; workers of one host share theirs (no offsets).
    """
    records = sorted((r for o in outcomes for r in o.records), key=lambda r: r.index)
    indices = [r.index for r in records]
    if indices != list(range(expected)):
        counts = Counter(indices)
        missing = [i for i in range(expected) if i not in counts][:10]
        doubled = sorted(i for i, n in counts.items() if n > 1)[:10]
        raise ValueError(f"the workers' records do not cover the cell's {expected} requests exactly once "
                         f"(missing {missing}, recorded twice {doubled})")
    return MergedCell(tuple(records), tuple(sorted(outcomes, key=lambda o: o.worker)),
                      together_spread(records, spec, arrivals), barrier_skew(outcomes, clock_offsets_ns or {}))


def together_spread(records: Sequence[RequestRecord], spec: CellSpec,
                    arrivals: Sequence[float] | Mapping[int, float] | None) -> float:
    """How far apart the requests meant to go out together were: the first round's start spread in a
    closed loop; in an open loop, the latest start against its schedule."""
    if arrivals is not None:
        return max((r.start - arrivals[r.index] for r in records), default=0.0)
    wave = first_wave(spec)
    first = [r.start for r in records if (r.index in wave if wave is not None else r.index < spec.users)]
    return max(first) - min(first) if first else 0.0


def first_wave(spec: CellSpec) -> frozenset[int] | None:
    """A closed-loop replay's requests that go out together: the first of each of the first `users`
    conversations (None for other cells: there, the first `users` indices)."""
    workload = spec.workload
    if workload is None or spec.mode == "open":
        return None
    return frozenset(seq[0] for seq in workload.conversations()[:spec.users])


def barrier_skew(outcomes: Sequence[ShardOutcome], clock_offsets_ns: dict[int, int]) -> float | None:
    """The spread of the workers' first writes, each read on its own wall clock and brought onto the
    coordinator's by its measured offset; None with fewer than two workers that wrote."""
    starts = [o.start_unix_ns - clock_offsets_ns.get(o.worker, 0) for o in outcomes if o.start_unix_ns is not None]
    if len(starts) < 2:
        return None
    return (max(starts) - min(starts)) / 1e9


def client_section(merged: MergedCell, backend: dict[str, Any], clock_uncertainty_s: float | None) -> dict[str, Any]:
    """The cell's `extra["client"]`: what the measuring client saw of itself.

    One worker on the runner's own loop: its self-check, as always. Several: the worst of each figure at
    the top (the longest stall, the busiest loop; CPU and run-queue wait summed), the start spread across
    all of them, the barrier skew, and every worker's own check under `workers`.
    """
    checks = [o.check for o in merged.outcomes]
    if backend.get("backend") == "in-process" and len(checks) == 1:
        return {**checks[0].to_dict(), "start_spread_s": merged.start_spread_s}
    waits = [c.runqueue_wait_s for c in checks]
    return {
        "wall_s": max((c.wall_s for c in checks), default=0.0),
        "cpu_s": sum(c.cpu_s for c in checks),
        "runqueue_wait_s": None if None in waits else sum(w for w in waits if w is not None),
        "max_loop_lag_s": max((c.max_loop_lag_s for c in checks), default=0.0),
        "heartbeats": sum(c.heartbeats for c in checks),
        "start_spread_s": merged.start_spread_s,
        "cpus": sorted({cpu for c in checks for cpu in c.cpus}),
        "busy": max((c.busy for c in checks), default=0.0),
        "barrier_skew_s": merged.barrier_skew_s,
        "clock_uncertainty_s": clock_uncertainty_s,
        **{k: v for k, v in backend.items() if k != "workers"},
        "workers": [{"worker": o.worker, "pid": o.pid, "host": o.host, "requests": len(o.records),
                     "first_write_s": o.first_write_s, "start_unix_ns": o.start_unix_ns, **o.check.to_dict()}
                    for o in merged.outcomes],
    }
