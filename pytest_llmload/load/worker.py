"""The worker code: one shard of a cell on one event loop, the same wherever that loop runs.

`ShardRunner` runs a shard (`shard.ShardJob`) on the running loop. In-process (one load worker, the
default on a small machine) and in a worker process (`processes.py`, which is also what each Ray actor
starts on its node: `raycluster.py`) it is the same code; only the start gate and the way its outcome
travels differ:

- closed loop: every connection of the shard's first round is opened, the shard says it is ready
  (`StartGate.start_at`), waits for the start instant and writes all its requests in one tight loop;
  a user's later rounds go out as its previous request ends;
- open loop: each request connects `OPEN_LOOP_LEAD_S` before its scheduled start and is written at it.

Each shard watches its own loop (`selfcheck.LoopMonitor`) and returns its raw records, relative to the
start instant, in a `ShardOutcome`. `abort` fails what is running: server death (later rounds then
fail at once, without connecting), cancellation, Ctrl-C.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import LoadWorkerError as LoadWorkerError  # defined there; imported from here too
from .client import Endpoint, StreamRequest, api_path, http_request, request_body
from .selfcheck import LoopMonitor
from .shard import ShardJob, ShardOutcome, together_spread

CONNECT_CONCURRENCY = 256  # simultaneous connects while opening a shard's connections
OPEN_LOOP_LEAD_S = 0.05  # open loop: connect this long before a request's scheduled start
SPIN_S = 0.002  # the last stretch before a start instant is waited by spinning: timers are ~1 ms coarse


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (cheaper I/O callbacks on the one core a worker has), else asyncio's.

    `LLMLOAD_EVENT_LOOP=asyncio` forces the standard loop (the benchmark compares both).
    """
    if os.environ.get("LLMLOAD_EVENT_LOOP", "uvloop") != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class StartGate(Protocol):
    """How a shard learns when to start."""

    async def start_at(self, lead_s: float) -> float:
        """Say the shard is ready (connected); return the CLOCK_MONOTONIC (perf_counter) start instant.
        `lead_s`: the least time the shard needs between now and its start."""


class LocalGate:
    """One worker alone: it starts as soon as it is ready (plus the lead it needs)."""

    async def start_at(self, lead_s: float) -> float:
        return time.perf_counter() + lead_s


class SignalledGate:
    """A worker among several: it reports ready, then waits for the coordinator's start instant on the
    CLOCK_MONOTONIC of its host (a Ray actor converts the cluster's wall-clock barrier: `monotonic_at_wall`)."""

    def __init__(self, on_ready: Callable[[], None]) -> None:
        self._on_ready = on_ready
        self._at: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def start_at(self, lead_s: float) -> float:
        self._on_ready()
        return await self._at

    def open_at(self, t_monotonic: float) -> None:
        """Start at this perf_counter() instant (same-host processes share CLOCK_MONOTONIC)."""
        if not self._at.done():
            self._at.set_result(t_monotonic)


def monotonic_at_wall(t_unix_ns: int) -> float:
    """The perf_counter() instant at which this host's wall clock will read `t_unix_ns`."""
    mono, wall = time.perf_counter_ns(), time.time_ns()
    return (mono + (t_unix_ns - wall)) / 1e9


class ShardRunner:
    """Runs one shard on the running event loop; `abort` may be called from the same loop at any time."""

    def __init__(self, job: ShardJob, on_request_done: Callable[[bool], None] | None = None) -> None:
        self.job = job
        self.on_request_done = on_request_done
        self.dead: str | None = None  # set when the coordinator reports the server dead
        self._active: set[StreamRequest] = set()
        self._connect_timeout = min(30.0, job.request_timeout_s)
        self._history: dict[int, list[dict[str, str]]] = {}  # conversations: messages so far, by conversation

    def abort(self, kind: str, detail: str) -> None:
        """Fail every running request (`server_died`: and every later one, without connecting)."""
        if kind == "server_died":
            self.dead = self.dead or detail
        for req in list(self._active):
            req.abort(kind, detail)

    async def run(self, gate: StartGate) -> ShardOutcome:
        """Run the shard; its requests' records come back relative to the start instant."""
        monitor = LoopMonitor()
        monitor.start()
        try:
            if self.job.spec.mode == "open":
                requests, t0 = await self._open_loop(gate)
            elif self.job.sequences:
                requests, t0 = await self._sequences(gate)
            else:
                requests, t0 = await self._closed_loop(gate)
        finally:
            monitor.cancel()  # a shard that was interrupted leaves no heartbeat behind on the loop
            self.abort("timeout", "cell cancelled")  # nothing is left running when we return or raise
            self._active.clear()
        records = tuple(r.record(t0) for r in requests)
        arrivals = self._arrival_offsets()
        check = monitor.stop(together_spread(records, self.job.spec, arrivals))
        first = min((r.start for r in records), default=None) if arrivals is None else None
        return ShardOutcome(self.job.worker, records, t0, wall_clock_at(t0), check, first,
                            any(r.lost_connection for r in requests), os.getpid(), socket.gethostname())

    def _arrival_offsets(self) -> dict[int, float] | None:
        return dict(self.job.arrivals) if self.job.spec.mode == "open" else None

    def _new_request(self, index: int) -> StreamRequest:
        job = self.job
        prompt = job.prompts[index]
        conversation, turn = job.meta.get(index, (None, None))
        history = self._history.get(conversation) if job.history and conversation is not None else None
        body = request_body(job.api, job.model, prompt.text, job.max_tokens.get(index, job.spec.max_tokens),
                            history)
        # A later turn's prompt is its history plus the new message: its size is the server's to say.
        req = StreamRequest(job.endpoint, http_request(job.endpoint, api_path(job.api), body), index=index,
                            expected_prompt_tokens=None if history else prompt.tokens, keep_text=job.history,
                            conversation=conversation, turn=turn)
        self._active.add(req)
        return req

    def _remember(self, req: StreamRequest) -> None:
        """A conversation's turn that succeeded joins its history (a failed one is left out of it)."""
        if not self.job.history or req.conversation is None or req.proto is None or req.proto.error is not None:
            return
        self._history.setdefault(req.conversation, []).extend(
            [{"role": "user", "content": self.job.prompts[req.index].text},
             {"role": "assistant", "content": req.reply}])

    def _done(self, req: StreamRequest) -> None:
        self._active.discard(req)
        if self.on_request_done is not None:
            self.on_request_done(req.proto is not None and req.proto.error is None)

    async def _closed_loop(self, gate: StartGate) -> tuple[list[StreamRequest], float]:
        job, spec = self.job, self.job.spec
        first = [self._new_request(u) for u in job.users]
        await self._connect_all(first)
        t0 = await gate.start_at(0.0)
        await sleep_until_precisely(t0)
        if self.dead is not None:  # the server died before the start (an abort that came while connecting)
            self.abort("server_died", self.dead)
        for req in first:  # the tight loop: nothing else between the writes
            req.send()
        done: list[StreamRequest] = []

        async def user(slot: int, u: int) -> None:
            req = first[slot]
            for r in range(spec.rounds):
                if r:
                    req = self._new_request(r * spec.users + u)
                    await self._start_later(req)
                await req.wait(job.request_timeout_s)
                done.append(req)
                self._done(req)

        try:
            await asyncio.gather(*(user(slot, u) for slot, u in enumerate(job.users)))
        finally:
            done.extend(r for r in first if r not in done)
        return sorted(done, key=lambda r: r.index), t0

    async def _sequences(self, gate: StartGate) -> tuple[list[StreamRequest], float]:
        """Conversations and closed-loop replays: `slots` users start their first requests together; each
        then sends the next request of its sequence as the previous one ends (after the think time), and
        takes the next sequence from the shard's queue when its own is done."""
        job, think = self.job, self.job.spec.think_time_s
        queue = deque(deque(seq) for seq in job.sequences)
        starts = [queue.popleft() for _ in range(min(job.slots, len(queue)))]
        first = [self._new_request(seq.popleft()) for seq in starts]
        await self._connect_all(first)
        t0 = await gate.start_at(0.0)
        await sleep_until_precisely(t0)
        if self.dead is not None:
            self.abort("server_died", self.dead)
        for req in first:  # the tight loop: nothing else between the writes
            req.send()
        done: list[StreamRequest] = []

        async def user(seq: deque[int], req: StreamRequest) -> None:
            while True:
                await req.wait(job.request_timeout_s)
                done.append(req)
                self._done(req)
                self._remember(req)
                if not seq:
                    if not queue:
                        return
                    seq = queue.popleft()
                if think > 0:
                    await asyncio.sleep(think)
                req = self._new_request(seq.popleft())
                await self._start_later(req)

        try:
            await asyncio.gather(*(user(seq, req) for seq, req in zip(starts, first)))
        finally:
            done.extend(r for r in first if r not in done)
        return sorted(done, key=lambda r: r.index), t0

    async def _open_loop(self, gate: StartGate) -> tuple[list[StreamRequest], float]:
        t0 = await gate.start_at(OPEN_LOOP_LEAD_S)
        reqs = [(self._new_request(i), at) for i, at in self.job.arrivals]

        async def one(req: StreamRequest, at: float) -> None:
            await sleep_until(t0 + at - OPEN_LOOP_LEAD_S)
            await self._start_later(req, t0 + at)
            await req.wait(self.job.request_timeout_s)
            self._done(req)

        await asyncio.gather(*(one(r, a) for r, a in reqs))
        return [r for r, _ in reqs], t0

    async def _start_later(self, req: StreamRequest, at: float | None = None) -> None:
        """Connect and send one request (at `at`, if given); fail it at once if the server is dead."""
        if self.dead is None:
            await req.connect(self._connect_timeout)
            if at is not None:
                await sleep_until(at)
        if self.dead is not None:
            if req.proto is None:
                req.fail_now("server_died", self.dead)
            else:
                req.abort("server_died", self.dead)
        req.send()

    async def _connect_all(self, reqs: Sequence[StreamRequest]) -> None:
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(req: StreamRequest) -> None:
            async with sem:
                if self.dead is None:
                    await req.connect(self._connect_timeout)
                else:
                    req.fail_now("server_died", self.dead)

        await asyncio.gather(*(one(r) for r in reqs))


@dataclass(frozen=True)
class Ran:
    """What a backend hands back for a cell: the shards' outcomes and the cell's one start instant."""

    outcomes: list[ShardOutcome]
    t0: float  # the start instant on the coordinator's CLOCK_MONOTONIC (perf_counter)
    t0_unix_ns: int  # ... and on its wall clock
    clock_offsets_ns: dict[int, int] | None = None  # workers on their own clocks: wall clock minus ours
    clock_uncertainty_s: float | None = None  # how well those offsets are known (half the best round trip)


OnProgress = Callable[[int, int], None]  # (requests ok, requests failed) since the last call


class Backend(Protocol):
    """Where a cell's shards run: here (`InProcess`), in worker processes, or in Ray actors."""

    name: str

    def size(self) -> int:
        """How many shards a cell is dealt into (at most); a cluster backend joins its cluster to count."""

    async def start(self, endpoint: Endpoint) -> None:
        """Start the workers now (once; again after one died) and check that they can reach `endpoint`;
        `errors.SetupError`, naming the fix, when they cannot start or cannot reach it."""

    async def run(self, jobs: Sequence[ShardJob], on_progress: OnProgress) -> Ran:
        """Run the shards with one start for all; on cancellation abort them, then re-raise."""

    def abort(self, kind: str, detail: str) -> None:
        """Fail what is running (from the coordinator's loop): server death, timeout, cancellation."""

    def describe(self) -> dict[str, Any]:
        """Where the workers run, for the cell's `extra["client"]`."""

    async def aclose(self) -> None:
        """Stop the workers; nothing may be left behind."""


class InProcess:
    """One load worker on the caller's own event loop: the shard runs right here (no process, no pickling)."""

    name = "in-process"

    def __init__(self) -> None:
        self._shard: ShardRunner | None = None

    def size(self) -> int:
        return 1

    async def start(self, endpoint: Endpoint) -> None:
        """Nothing to start: the shard runs on the caller's loop, which reaches what the caller reaches."""

    async def run(self, jobs: Sequence[ShardJob], on_progress: OnProgress) -> Ran:
        [job] = jobs
        self._shard = ShardRunner(job, lambda ok: on_progress(int(ok), int(not ok)))
        try:
            outcome = await self._shard.run(LocalGate())
        finally:
            self._shard = None
        return Ran([outcome], outcome.t0, outcome.t0_unix_ns)

    def abort(self, kind: str, detail: str) -> None:
        if self._shard is not None:
            self._shard.abort(kind, detail)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "workers": 1}

    async def aclose(self) -> None:
        self.abort("timeout", "runner closed")


def wall_clock_at(t0: float) -> int:
    """The wall clock (ns since the epoch) at perf_counter() instant `t0`: read both clocks back to back
    now and carry the offset, so the pair describes one instant to within microseconds."""
    mono, wall = time.perf_counter_ns(), time.time_ns()
    return wall - (mono - round(t0 * 1e9))


async def sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def sleep_until_precisely(deadline: float) -> None:
    """Sleep, then spin the last `SPIN_S`: the start of a shard is as exact as the clock, not the timer."""
    await sleep_until(deadline - SPIN_S)
    while time.perf_counter() < deadline:
        pass


