"""Load workers as Ray actors: the same worker code on many hosts, one start for all (`--llm-load-cluster ray`).

Ray is optional (`pip install 'pytest-llmload[ray]'`) and imported only here, only when asked for.
The session joins the cluster at `--llm-ray-address` / `RAY_ADDRESS` (`ray.init(address=...)`), or
starts a local Ray when neither is given, and places its actors with a placement group: one actor
per alive node (`STRICT_SPREAD`) by default, or K actors where `--llm-load-workers K` asks
(`STRICT_SPREAD` when the cluster has K nodes, else `SPREAD`). Every actor starts one load worker
process on its node (`processes.ProcessBackend`) and relays its shard to it: the same worker code
(`worker.ShardRunner` on uvloop) in a process of its own. (Run inside the actor's process, beside Ray's
threads, the loop timestamped [DONE] 20 ms late at 512 users on two cores; in its own process, as
accurately as one local worker: see benchmarks/README.md.)

Clocks: hosts do not share CLOCK_MONOTONIC. The start barrier is therefore a wall-clock instant
(`time.time_ns()`, `RAY_GO_LEAD_S` ahead) that each actor converts to its host's monotonic clock
(`worker.monotonic_at_wall`); each worker times its requests on that clock relative to that instant. Before the start, the coordinator measures each actor's wall-clock offset from its own
(the best of `CLOCK_PINGS` round trips; the uncertainty is half that round trip), and after the cell the
barrier skew, the spread of the actors' first writes on the coordinator's clock, counts in the cell's
validity like the start spread (`selfcheck.judge_cell`).

Faults of the set-up are `errors.SetupError`s, raised before the first cell (`LoadRunner.start`, else the
first cell's start), never a failed cell: actors that cannot be placed or cannot start (pytest-llmload
missing on a node), and a server on this host's loopback (127.0.0.1, localhost) when an actor runs on
another node, which could never reach it.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import os
import re
import socket
import time
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError, SetupError
from .client import Endpoint
from .shard import ShardJob, ShardOutcome
from .worker import LoadWorkerError, OnProgress, Ran, monotonic_at_wall

RAY_GO_LEAD_S = 0.25  # the wall-clock start lies this far ahead: time for "go" to reach every host
CLOCK_PINGS = 5
PLACEMENT_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 5.0
PROGRESS_EVERY_S = 0.5
INSTALL_HINT = "pip install 'pytest-llmload[ray]'"


def import_ray() -> Any:
    """The `ray` module, or a ConfigError that says how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise ConfigError(f"--llm-load-cluster ray needs Ray, which is not installed: {INSTALL_HINT}") from None


class ShardActor:
    """The body of the Ray actor (made remote at run time). It measures nothing itself: it starts one load
    worker process on its node (`processes.ProcessBackend`, the very code of `--llm-load-workers`) and
    relays the cell to it, so the measuring loop runs in a clean process of its own, never beside Ray's
    threads. Every method is async (an async actor), so `abort` and `go` reach it while `result` waits."""

    def __init__(self) -> None:
        from .processes import ProcessBackend

        self._worker = ProcessBackend(1)
        self._preparing: asyncio.Future[None] | None = None
        self.counts = [0, 0]

    def _count(self, ok: int, failed: int) -> None:
        self.counts[0] += ok
        self.counts[1] += failed

    async def hello(self) -> dict[str, Any]:
        ray = import_ray()
        await self._worker.start_workers()
        return {"pid": self._worker.pids[0], "actor_pid": os.getpid(), "host": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id()}

    async def now_ns(self) -> int:
        return time.time_ns()

    async def prepare(self, job: ShardJob) -> None:
        """Hand the shard to the worker; return once it is connected and waits for the start."""
        self.counts = [0, 0]
        self._preparing = asyncio.ensure_future(self._worker.start_cell([job], self._count))
        await asyncio.shield(self._preparing)

    async def go(self, t_unix_ns: int) -> None:
        """Start when this host's wall clock reads `t_unix_ns`: that instant on this host's monotonic clock."""
        self._worker.go(monotonic_at_wall(t_unix_ns))

    async def result(self) -> ShardOutcome | None:
        """The shard's outcome once it ended; None when it never started (its preparation failed)."""
        if self._preparing is not None:  # one thing at a time on the worker's socket: first the start
            await asyncio.gather(self._preparing, return_exceptions=True)
        if not self._worker.running:
            return None
        [outcome] = await self._worker.finish()
        return outcome

    async def progress(self) -> tuple[int, int]:
        return self.counts[0], self.counts[1]

    async def abort(self, kind: str, detail: str) -> None:
        self._worker.abort(kind, detail)

    async def stop(self) -> None:
        await self._worker.aclose()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RayBackend:
    """Ray actors placed over the cluster's nodes; created at the first cell, kept for the next ones."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.requested = workers  # None: one per alive node
        self.address = address
        self.workers = workers or 1  # known once started
        self._actors: list[Any] = []
        self._hello: list[dict[str, Any]] = []
        self._pg: Any = None
        self._owns_ray = False
        self._running: list[Any] = []
        self._strategy = ""
        self._clock: dict[str, Any] = {}
        self._seen: list[tuple[int, int]] = []  # requests (ok, failed) each actor had reported
        self._aborted: tuple[str, str] | None = None  # the last abort of the cell being run

    # ---- the cluster ------------------------------------------------------------------------------------
    def size(self) -> int:
        return len(self._start())

    def _start(self) -> list[Any]:
        if self._actors:
            return self._actors
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        count = self.requested or max(1, len(nodes))
        self._strategy = "STRICT_SPREAD" if count <= len(nodes) else "SPREAD"
        self._pg = placement_group([{"CPU": 1}] * count, strategy=self._strategy)
        try:
            ray.get(self._pg.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - GetTimeoutError and friends: the cluster cannot place them
            self._shutdown(ray)
            raise SetupError(f"the Ray cluster could not place {count} load actor(s) of 1 CPU each "
                             f"({self._strategy}, {len(nodes)} node(s)) within {PLACEMENT_TIMEOUT_S:g} s: {exc!r}\n"
                             "fix: ask for at most as many --llm-load-workers as the cluster has free CPUs, "
                             "or leave it unset (one actor per node)") from None
        actor_class = ray.remote(num_cpus=1)(ShardActor)
        self._actors = [actor_class.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=self._pg, placement_group_bundle_index=i)).remote() for i in range(count)]
        try:
            self._hello = ray.get([a.hello.remote() for a in self._actors], timeout=PLACEMENT_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - RayActorError, GetTimeoutError: an actor could not start
            self._shutdown(ray)
            raise SetupError(f"the Ray load actors could not start their load worker: {_ray_error_text(exc)}\n"
                             "fix: every node of the cluster needs this Python environment, pytest-llmload "
                             "included (a runtime_env or the same image on every node)") from None
        self.workers = count
        return self._actors

    async def start(self, endpoint: Endpoint) -> None:
        """Place and start the actors (blocking: Ray's own calls), then refuse a server they cannot reach."""
        self._start()
        self._check_reachable(endpoint.host)

    def _check_reachable(self, host: str) -> None:
        """SetupError when the server is on this host's loopback and an actor runs on another node."""
        if not _is_loopback(host):
            return
        ray = import_ray()
        here = ray.get_runtime_context().get_node_id()
        away = [h["host"] for h in self._hello if h["node_id"] != here]
        if away:
            nodes = sorted({h["node_id"][:12] for h in self._hello if h["node_id"] != here})
            address = ray.util.get_node_ip_address()
            raise SetupError(
                f"the server is at {host}, this host's loopback, but load actors run on other nodes "
                f"({', '.join(sorted(set(away)))}; node {', '.join(nodes)}): they cannot reach it\n"
                f"fix: serve on an address of this host they reach (this node's address in the Ray cluster is "
                f"{address}): --llm-host {address} for a server the session starts, or --llm-base-url "
                f"http://{address}:PORT for one already serving there")

    # ---- a cell -----------------------------------------------------------------------------------------
    async def run(self, jobs: Sequence[ShardJob], on_progress: OnProgress) -> Ran:
        actors = self._start()[:len(jobs)]
        self._check_reachable(jobs[0].endpoint.host)
        self._running = actors
        self._seen = [(0, 0)] * len(actors)
        self._aborted = None
        results: list[Any] = []  # the actors' result() calls, once made (each is made once)
        poller: asyncio.Future[None] | None = None
        try:
            await asyncio.gather(*(_await(a.prepare.remote(job), k) for k, (a, job) in enumerate(zip(actors, jobs))))
            if self._aborted is not None:  # an actor may have run the abort before its prepare: again, now
                self.abort(*self._aborted)
            offsets, uncertainty = await self._clock_offsets(actors)
            t_unix_ns = time.time_ns() + round(RAY_GO_LEAD_S * 1e9)
            for actor in actors:
                actor.go.remote(t_unix_ns)
            poller = asyncio.ensure_future(self._poll_progress(actors, on_progress))
            results = [a.result.remote() for a in actors]
            outcomes: list[ShardOutcome] = list(await asyncio.gather(*(_await(r, k) for k, r in enumerate(results))))
        except BaseException as exc:  # cancelled (Ctrl-C) or an actor failed: stop every actor's requests
            self.abort("timeout", "cell cancelled")
            refs = results or [a.result.remote() for a in actors]
            drain = asyncio.gather(*(_await(r) for r in refs), return_exceptions=True)
            try:
                await asyncio.wait_for(drain, DRAIN_TIMEOUT_S)
            except asyncio.TimeoutError:
                pass  # the actors are dropped or killed at close; their workers exit with their sockets
            if isinstance(exc, LoadWorkerError):
                self._drop_actors(import_ray())  # the next cell gets fresh ones
            raise
        finally:
            self._running = []
            if poller is not None:
                poller.cancel()
        await self._report_progress(actors, on_progress)
        # The start instant on this host's monotonic clock, for the cell's anchor (t0_monotonic_ns).
        t0 = (time.perf_counter_ns() - (time.time_ns() - t_unix_ns)) / 1e9
        self._clock = {"offsets_ms": {str(k): v / 1e6 for k, v in offsets.items()},
                       "uncertainty_ms": uncertainty * 1e3}
        return Ran(outcomes, t0, t_unix_ns, offsets, uncertainty)

    async def _clock_offsets(self, actors: Sequence[Any]) -> tuple[dict[int, int], float]:
        """Each actor's wall clock minus ours, from the round trip with the least delay (NTP's rule)."""
        async def one(actor: Any) -> tuple[int, int]:
            best: tuple[int, int] | None = None
            for _ in range(CLOCK_PINGS):
                sent = time.time_ns()
                theirs = await _await(actor.now_ns.remote())
                back = time.time_ns()
                sample = (back - sent, theirs - (sent + back) // 2)
                best = sample if best is None or sample[0] < best[0] else best
            assert best is not None
            return best

        samples = await asyncio.gather(*(one(a) for a in actors))
        return {k: offset for k, (_, offset) in enumerate(samples)}, max(rtt for rtt, _ in samples) / 2e9

    async def _poll_progress(self, actors: Sequence[Any], on_progress: OnProgress) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            await self._report_progress(actors, on_progress)

    async def _report_progress(self, actors: Sequence[Any], on_progress: OnProgress) -> None:
        """The requests the actors finished since the last report."""
        counts = await asyncio.gather(*(_await(a.progress.remote()) for a in actors))
        for (ok, failed), (ok0, failed0) in zip(counts, self._seen):
            on_progress(ok - ok0, failed - failed0)
        self._seen = list(counts)

    def abort(self, kind: str, detail: str) -> None:
        self._aborted = (kind, detail)
        for actor in self._running:
            actor.abort.remote(kind, detail)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "placement": self._strategy, "clock": self._clock,
                "nodes": sorted({h["node_id"][:12] for h in self._hello})}

    async def aclose(self) -> None:
        if not self._actors and not self._owns_ray and self._pg is None:
            return
        ray = import_ray()
        self._shutdown(ray)

    def _shutdown(self, ray: Any) -> None:
        self._drop_actors(ray)
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    def _drop_actors(self, ray: Any) -> None:
        """Stop the actors (their worker processes close their sockets and exit), remove the placement group."""
        actors, self._actors, self._hello = self._actors, [], []
        for actor in actors:
            try:
                ray.get(actor.stop.remote(), timeout=DRAIN_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - killed below anyway
                pass
            ray.kill(actor)
        if self._pg is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self._pg)
            self._pg = None


async def _await(ref: Any, actor: int | None = None) -> Any:
    """An ObjectRef awaited on any event loop (uvloop included); Ray's errors become LoadWorkerError."""
    try:
        return await asyncio.wrap_future(ref.future())
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - RayActorError, RayTaskError: a worker failed
        who = "a Ray load actor" if actor is None else f"Ray load actor {actor}"
        raise LoadWorkerError(f"{who} failed: {_ray_error_text(exc)}") from exc


def _ray_error_text(exc: Exception) -> str:
    """What went wrong, without Ray's wrapping: the exception raised in the actor, else the first line."""
    cause = getattr(exc, "cause", None)
    text = str(cause) if isinstance(cause, BaseException) else str(exc).strip().splitlines()[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
