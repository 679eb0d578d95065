"""The asyncio engine that runs a cell, a matrix of cells, or an open-loop rate; with a sync facade.

A closed-loop cell is N users sending one streaming request each at the same moment (and `rounds`
requests in a row). To make "the same moment" true, every connection is opened first (bounded
concurrency), then all requests are written in one tight loop; each record's start is taken just
before its bytes are written, and `CellStats.start_spread_s` shows how long that loop took.

The runner coordinates: it sizes the prompts, deals the cell over its load workers (`shard.py`), runs
them through a backend (`worker.InProcess`: one worker on the runner's own loop, the default on a small
machine; `processes.ProcessBackend`: K processes on K cores; `raycluster.RayBackend`: Ray actors on
many hosts), watches the server meanwhile, and merges the workers' raw records into one cell. Every
worker runs the same code (`worker.ShardRunner`) and the same self-check.

A failed or invalid cell says who is at fault (`CellResult.cause`): "server" (it answered with errors,
died, or could not run the cell), "client" (a load worker crashed; the cell is invalid). A fault of the
set-up (workers that cannot start or cannot reach the server, a server without /tokenize and no local
tokenizer) is raised as `SetupError`, naming the fix: `start()` finds it before the first cell.

The runner owns its event loop (uvloop when installed: see `benchmarks/README.md` for the numbers),
so `run_cell` can be called from plain synchronous code such as a pytest test.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TextIO, TypeVar, runtime_checkable

import httpx

from .client import Endpoint, api_path
from ..control import async_client
from ..errors import LoadWorkerError, PromptSizingError, SetupError
from ..metrics import cell_stats
from ..vocabulary import goodput_of
from .progress import Progress
from .selfcheck import judge_cell
from ..results import CellResult, CellSpec, RequestRecord
from .conversation import (CACHE_STATES, conversation_plan, trace_plan, trace_prompts, turn_sections, usage_hit_rate,
                           warm_prompts)
from .shard import MergedCell, RequestPlan, client_section, merge_outcomes, plan_shards
from .worker import Backend, InProcess, Ran, new_event_loop
from .workload import LocalTokenizer, Prompt, PromptFactory, ServerTokenizer, TokenCounter, matrix

__all__ = ["CellObserver", "LoadRunner", "arrival_times", "make_backend", "new_event_loop"]

T = TypeVar("T")
STATUS_POLL_S = 0.1  # how often server_status is asked during a cell
MAX_REQUESTS_PER_CELL = 100_000  # a bound on any cell, so that a typo cannot run forever
DEATH_NOTICE_S = 1.0  # after streams were cut, how long to wait for a dying server's exit status


@runtime_checkable
class CellObserver(Protocol):
    """Something that watches each cell (telemetry, /metrics deltas); its dict lands in `extra[name]`."""

    name: str

    def before_cell(self, spec: CellSpec) -> None:
        """Called right before the cell's requests are launched."""

    def after_cell(self, result: CellResult) -> dict[str, Any] | None:
        """Called once all requests of the cell finished; the dict is stored in `result.extra[name]`."""

    def close(self) -> None:
        """Release threads and connections (the session calls it at its end)."""


def make_backend(workers: int | None = 1, worker_cpus: Sequence[int] = (), cluster: str = "local",
                 ray_address: str | None = None) -> Backend:
    """Where a runner's load workers run: `cluster="local"`: one worker on the runner's own loop
    (`workers` 1), else `workers` processes pinned round-robin to `worker_cpus` (none: unpinned);
    `cluster="ray"`: Ray actors, one per node (`workers` None) or `workers` of them."""
    if cluster == "ray":
        from .raycluster import RayBackend, import_ray

        import_ray()  # fail now, with the install hint, rather than at the first cell
        return RayBackend(workers, ray_address)
    if cluster != "local":
        raise ValueError(f"cluster must be 'local' or 'ray', got {cluster!r}")
    if workers is None or workers == 1:
        return InProcess()
    from .processes import ProcessBackend

    return ProcessBackend(workers, worker_cpus)


class LoadRunner:
    """Runs cells against one OpenAI-compatible server; use as a context manager or call `close()`."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, api: str = "completions",
                 request_timeout_s: float = 600.0, server_status: Callable[[], int | None] | None = None,
                 log_tail: Callable[[], str] | None = None, observers: Sequence[CellObserver] = (),
                 progress: bool | None = None, progress_stream: TextIO | None = None, shared_prefix: bool = False,
                 tokenizer_path: str | None = None, workers: int | None = 1, worker_cpus: Sequence[int] = (),
                 cluster: str = "local", ray_address: str | None = None) -> None:
        if api not in ("completions", "chat"):
            raise ValueError(f"api must be 'completions' or 'chat', got {api!r}")
        self.base_url = base_url
        self.model = model
        self.api = api
        self.endpoint = Endpoint.from_url(base_url, api_key)
        self.request_timeout_s = request_timeout_s
        self.server_status = server_status
        self.log_tail = log_tail
        self.observers = tuple(observers)
        self.progress = Progress(progress_stream, enabled=progress)
        self.shared_prefix = shared_prefix
        self.tokenizer_path = tokenizer_path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._factories: dict[str, PromptFactory] = {}  # by API: conversations size chat prompts
        self._dead: str | None = None  # cause of death, once the server is known dead
        # Where the cell's load workers run (see make_backend); started at the first cell.
        self.backend = make_backend(workers, worker_cpus, cluster, ray_address)
        # perf_counter() value of the last cell's start: record times + last_t0 give absolute
        # CLOCK_MONOTONIC times, to correlate with a server's own timestamps (the accuracy benchmark).
        self.last_t0: float | None = None

    # ---- sync facade -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the load workers and check that they reach the server, before the first cell: SetupError,
        naming the fix, when they cannot (every cell does this too; it is done once)."""
        self._run(self.astart())

    def run_cell(self, spec: CellSpec) -> CellResult:
        """Run one cell and return its result (never raises for a failed cell: `ok` is False and `cause`
        says whose fault it was); SetupError when the tool's set-up cannot measure any cell."""
        return self._run(self.arun_cell(spec))

    def run_cell_kw(self, users: int, prompt_tokens: int, max_tokens: int = 100, rounds: int = 1) -> CellResult:
        """`run_cell` with keyword arguments."""
        return self.run_cell(CellSpec(users=users, prompt_tokens=prompt_tokens, max_tokens=max_tokens,
                                      rounds=rounds))

    def run_matrix(self, users: Sequence[int], prompt_tokens: Sequence[int], max_tokens: int = 100,
                   on_cell: Callable[[CellResult], None] | None = None) -> list[CellResult]:
        """Every users x prompt-size cell; a failed cell does not stop the matrix."""
        cells = matrix(users, prompt_tokens)
        self.progress.start_matrix(len(cells))
        results = []
        try:
            for u, p in cells:
                result = self.run_cell(CellSpec(users=u, prompt_tokens=p, max_tokens=max_tokens))
                results.append(result)
                if on_cell is not None:
                    on_cell(result)
        finally:
            self.progress.close()
        return results

    def run_open_loop(self, rate: float, duration_s: float, prompt_tokens: int, max_tokens: int = 100,
                      poisson: bool = True, seed: int = 0) -> CellResult:
        """Requests arriving at `rate` per second for `duration_s` (Poisson or evenly spaced)."""
        return self.run_cell(CellSpec(users=0, prompt_tokens=prompt_tokens, max_tokens=max_tokens, mode="open",
                                      rate=rate, duration_s=duration_s, poisson=poisson, seed=seed))

    def close(self) -> None:
        """Close every connection and the event loop."""
        if self._loop is None:
            return
        if self._http is not None:
            self._loop.run_until_complete(self._http.aclose())
            self._http = None
        self._abort_all("timeout", "runner closed")
        self._loop.run_until_complete(self.backend.aclose())
        self._loop.close()
        self._loop = None

    def __enter__(self) -> LoadRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run on our loop; on Ctrl-C cancel the cell so that its `finally` closes sockets, then raise
        KeyboardInterrupt. SIGINT is routed through the loop while it runs: uvloop handles signals in
        its own callbacks and may log a KeyboardInterrupt raised there instead of propagating it."""
        if self._loop is None:
            self._loop = new_event_loop()
        task = self._loop.create_task(coro)
        interrupted = False

        def on_sigint() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        restore = _trap_sigint(self._loop, on_sigint)
        try:
            result = self._loop.run_until_complete(task)
        except BaseException:
            task.cancel()
            try:
                self._loop.run_until_complete(task)
            except BaseException:  # noqa: BLE001 - the first exception is the one to re-raise
                pass
            self._abort_all("timeout", "interrupted")
            if interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            restore()
        if interrupted:  # the cell swallowed the cancellation and finished: still stop the session
            self._abort_all("timeout", "interrupted")
            raise KeyboardInterrupt
        return result

    # ---- a cell -------------------------------------------------------------------------------------
    async def astart(self) -> None:
        """The async version of `start`."""
        await self.backend.start(self.endpoint)

    async def arun_cell(self, spec: CellSpec) -> CellResult:
        """The async version of `run_cell`."""
        if spec.workload is not None:
            label = spec.label
        elif spec.mode == "open":
            label = f"rate={spec.rate:g}/s P={spec.prompt_tokens}"
        else:
            label = f"users={spec.users} P={spec.prompt_tokens}" + (f" turns={spec.turns}" if spec.turns > 1 else "")
        if (died := self._death_cause()) is not None:
            return self._failed(spec, died, "server")
        try:
            n, arrivals = self._request_count(spec)
        except ValueError as e:  # a cell that cannot be asked for: nothing of the server's
            return self._failed(spec, f"cannot run this cell: {e}", "setup")
        await self.astart()
        if (died := self._death_cause()) is not None:  # while the workers started
            return self._failed(spec, died, "server")
        try:
            prompts, plan = await self._prompts(spec, n)
        except SetupError:
            raise
        except Exception as e:  # noqa: BLE001 - any sizing failure is this cell's error, not the run's
            # Sizing talks to the server (/tokenize): if it died meanwhile, that is the cause to report.
            if (died := self._death_cause()) is not None:
                return self._failed(spec, died, "server")
            return self._failed(spec, f"cannot build prompts of {spec.prompt_tokens} tokens: {e!r}",
                                "server" if isinstance(e, (PromptSizingError, httpx.HTTPError)) else "client")
        cache = await self._prepare_cache(spec, prompts, plan)  # before the observers: warming is not the cell's
        warnings = self._call_observers_before(spec)
        self.progress.start_cell(label, n)
        try:
            launched = await self._launch(spec, prompts, arrivals, n, plan)
        except LoadWorkerError as e:  # a worker crashed: this cell fails, the run goes on with fresh workers
            died = self._death_cause()
            return self._failed(spec, died or str(e), "server" if died else "client")
        finally:
            self._abort_all("timeout", "cell cancelled")
            self.progress.end_cell()
        return self._result(spec, launched, warnings, cache)

    async def _prompts(self, spec: CellSpec, n: int) -> tuple[list[Prompt], RequestPlan | None]:
        """The cell's prompts, and what a workload adds to them (None for a plain cell)."""
        if spec.workload is not None:
            factory = await self._prompt_factory()
            return (await trace_prompts(spec.workload, factory),
                    trace_plan(spec.workload, closed=spec.mode != "open"))
        if spec.turns > 1:
            factory = await self._prompt_factory("chat")
            return await factory.prompts(spec.prompt_tokens, n), conversation_plan(spec.users, spec.turns)
        return await (await self._prompt_factory()).prompts(spec.prompt_tokens, n), None

    async def _prepare_cache(self, spec: CellSpec, prompts: list[Prompt], plan: RequestPlan | None) -> dict[str, Any] | None:
        """Put the server's prefix cache in the state the cell asks for (see `conversation.py`); what it
        was, for `extra["prefix_cache"]`."""
        if not spec.cache:
            return None
        if spec.cache not in CACHE_STATES:
            return {"asked": spec.cache, "state": "uncontrolled",
                    "reason": f"unknown cache state {spec.cache!r}; expected one of {', '.join(CACHE_STATES)}"}
        if spec.cache == "uncontrolled":
            return {"asked": spec.cache, "state": "uncontrolled", "reason": "not controlled, as asked"}
        if self._http is None:
            self._http = async_client(self.base_url, self.endpoint.api_key)
        if spec.cache == "cold":
            reason = await self._reset_prefix_cache()
            return {"asked": "cold", "state": "uncontrolled" if reason else "cold", "reason": reason}
        api = "chat" if plan is not None and plan.history else self.api
        sem = asyncio.Semaphore(8)

        async def one(prompt: Prompt) -> bool:
            body: dict[str, Any] = {"model": self.model, "max_tokens": 1}
            if api == "chat":
                body["messages"] = [{"role": "user", "content": prompt.text}]
            else:
                body["prompt"] = prompt.text
            async with sem:
                assert self._http is not None
                r = await self._http.post(api_path(api), json=body)
            return r.status_code == 200

        sent = warm_prompts(prompts, plan)
        results = await asyncio.gather(*(one(p) for p in sent), return_exceptions=True)
        failed = sum(1 for r in results if r is not True)
        return {"asked": "warm", "state": "warm" if not failed else "uncontrolled", "warmed": len(sent),
                "reason": f"{failed} of {len(sent)} warming requests failed" if failed else None}

    async def _reset_prefix_cache(self) -> str | None:
        """POST /reset_prefix_cache (vLLM answers success false while blocks are held: retried briefly);
        None when the cache was reset, else why not."""
        assert self._http is not None
        detail = ""
        for _ in range(10):
            try:
                r = await self._http.post("/reset_prefix_cache")
            except httpx.HTTPError as e:
                return f"POST /reset_prefix_cache failed: {e!r}"
            if r.status_code != 200:
                return (f"POST /reset_prefix_cache answered HTTP {r.status_code}: vLLM serves it only with "
                        "VLLM_SERVER_DEV_MODE=1 (set for servers the plugin launches on loopback)")
            try:
                if r.json().get("success", True):
                    return None
            except ValueError:
                return None  # older vLLM answers 200 with no body
            detail = r.text[:200]
            await asyncio.sleep(0.1)
        return f"POST /reset_prefix_cache did not succeed: {detail}"

    def _request_count(self, spec: CellSpec) -> tuple[int, list[float] | None]:
        if spec.workload is not None:
            n = len(spec.workload)
            if n > MAX_REQUESTS_PER_CELL:
                raise ValueError(f"{n} requests in one cell is more than the limit of {MAX_REQUESTS_PER_CELL}")
            if spec.mode != "open" and spec.users < 1:
                raise ValueError("a closed-loop replay needs users >= 1")
            return n, spec.workload.arrivals(spec.speed) if spec.mode == "open" else None
        if spec.turns > 1:
            if spec.users < 1 or spec.rounds != 1 or spec.mode != "closed":
                raise ValueError("a conversation cell needs users >= 1, closed loop, rounds 1")
            return spec.users * spec.turns, None
        if spec.mode == "open":
            if not spec.rate or spec.rate <= 0 or not spec.duration_s or spec.duration_s <= 0:
                raise ValueError("an open-loop cell needs rate > 0 and duration_s > 0")
            arrivals = arrival_times(spec.rate, spec.duration_s, spec.poisson, spec.seed)
            n = len(arrivals)
        else:
            if spec.users < 1 or spec.rounds < 1:
                raise ValueError("a closed-loop cell needs users >= 1 and rounds >= 1")
            arrivals, n = None, spec.users * spec.rounds
        if n > MAX_REQUESTS_PER_CELL:
            raise ValueError(f"{n} requests in one cell is more than the limit of {MAX_REQUESTS_PER_CELL}")
        return n, arrivals

    async def _launch(self, spec: CellSpec, prompts: list[Prompt], arrivals: list[float] | None,
                      n: int, plan: RequestPlan | None = None) -> _Launched:
        """Run the shards through the backend while a watcher polls the server; merge their records."""
        api = "chat" if plan is not None and plan.history else self.api
        jobs = plan_shards(spec, prompts, arrivals, self.backend.size(), endpoint=self.endpoint, api=api,
                           model=self.model, request_timeout_s=self.request_timeout_s, plan=plan)
        watcher = asyncio.ensure_future(self._watch_server())
        work_task = asyncio.ensure_future(self.backend.run(jobs, self.progress.add_done))
        try:
            await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.done() and not work_task.done():  # the server died: stop now, not at the timeouts
                self._abort_all("server_died", self._dead or "server died")
            ran = await work_task
        finally:
            watcher.cancel()
            if not work_task.done():  # cancelled (Ctrl-C): let the backend stop its workers before we go on
                work_task.cancel()
                await asyncio.gather(work_task, return_exceptions=True)
        merged = merge_outcomes(ran.outcomes, spec, arrivals, n, ran.clock_offsets_ns)
        self.last_t0 = ran.t0
        if self._dead is None and merged.lost_connection:
            await self._await_death_notice()
        return _Launched(merged, ran, self._dead)

    async def _await_death_notice(self) -> None:
        """Streams cut by a dying server end before its exit status is polled: look again, briefly,
        so that the cell says "server died" rather than blaming each stream."""
        if self.server_status is None:
            return
        deadline = time.perf_counter() + DEATH_NOTICE_S
        while self._death_cause() is None and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)

    async def _watch_server(self) -> None:
        """Return as soon as the launched server is seen dead (never returns without a status callable)."""
        if self.server_status is None:
            await asyncio.Event().wait()
        while self._death_cause() is None:
            await asyncio.sleep(STATUS_POLL_S)

    def _abort_all(self, kind: str, detail: str) -> None:
        self.backend.abort(kind, detail)

    # ---- results -------------------------------------------------------------------------------------
    def _result(self, spec: CellSpec, launched: _Launched, warnings: list[str],
                cache: dict[str, Any] | None = None) -> CellResult:
        merged, ran = launched.merged, launched.ran
        records = merged.records
        stats = cell_stats(records)  # over every worker's records at once: exact, never merged percentiles
        if spec.goodput_ttft_s is not None or spec.goodput_tpot_s is not None:
            stats = dataclasses.replace(stats, goodput=goodput_of(records, spec.goodput_ttft_s, spec.goodput_tpot_s))
        error = launched.died or _failure_cause(records)
        cause = None if error is None else "server" if records else "setup"  # no records: none were asked
        result = CellResult(users=spec.users, prompt_tokens=spec.prompt_tokens, max_tokens=spec.max_tokens,
                            ok=error is None, error=error, stats=stats, records=records, mode=spec.mode,
                            rate=spec.rate, rounds=spec.rounds, t0_monotonic_ns=round(ran.t0 * 1e9),
                            t0_unix_ns=ran.t0_unix_ns, cause=cause, **_workload_fields(spec))
        # Observers see the measured cell; their sections and the verdict on its validity complete it in
        # a new (frozen) CellResult.
        extra, observer_warnings = self._call_observers_after(result)
        stats = _with_hit_rate(stats, extra, records)
        result = dataclasses.replace(result, stats=stats)
        workload_reasons = self._workload_sections(spec, extra, records, cache)
        extra["client"] = client_section(merged, self.backend.describe(), ran.clock_uncertainty_s)
        warnings = warnings + observer_warnings
        if warnings:
            extra["warnings"] = warnings
        # Workers on their own clocks (Ray) have their barrier skew judged; on one host the start spread
        # already compares every worker's writes on the one CLOCK_MONOTONIC.
        own_clocks = ran.clock_offsets_ns is not None
        reasons = () if not result.ok else judge_cell(
            [o.check for o in merged.outcomes], merged.start_spread_s, stats.e2e.p50 if stats.e2e else None,
            _observer_invalid(extra), stats.prompt_tokens_mismatches, spec.prompt_tokens,
            barrier_skew_s=merged.barrier_skew_s if own_clocks else None,
            clock_uncertainty_s=ran.clock_uncertainty_s)
        reasons = (*reasons, *workload_reasons) if result.ok else reasons
        return dataclasses.replace(result, extra=extra, valid=not reasons, invalid_reasons=reasons,
                                   cause="client" if reasons else result.cause)

    @staticmethod
    def _workload_sections(spec: CellSpec, extra: dict[str, Any], records: Sequence[RequestRecord],
                           cache: dict[str, Any] | None) -> tuple[str, ...]:
        """`extra["turns"]`, `extra["prefix_cache"]`, `extra["goodput"]`, `extra["workload"]`; and why the
        cell is invalid when its cache was asked cold or warm and could not be put in that state."""
        if spec.turns > 1:
            extra["turns"] = turn_sections(records)
        if spec.goodput_ttft_s is not None or spec.goodput_tpot_s is not None:
            extra["goodput"] = {"ttft_ms": None if spec.goodput_ttft_s is None else spec.goodput_ttft_s * 1000,
                                "tpot_ms": None if spec.goodput_tpot_s is None else spec.goodput_tpot_s * 1000}
        if spec.workload is not None:
            extra["workload"] = {"name": spec.workload.name, "path": spec.workload.path,
                                 "requests": len(spec.workload), "speed": spec.speed}
        if cache is None:
            return ()
        section = extra.get("server_metrics")
        server: dict[str, Any] = section if isinstance(section, dict) else {}
        extra["prefix_cache"] = {**cache, "hit_rate": server.get("prefix_cache_hit_rate"),
                                 "usage_hit_rate": usage_hit_rate(records)}
        if cache["asked"] in ("cold", "warm") and cache["state"] != cache["asked"]:
            return (f"the prefix cache was asked {cache['asked']} but could not be put in that state: "
                    f"{cache.get('reason')}",)
        return ()

    def _failed(self, spec: CellSpec, error: str, cause: str) -> CellResult:
        return CellResult(users=spec.users, prompt_tokens=spec.prompt_tokens, max_tokens=spec.max_tokens,
                          ok=False, error=error, mode=spec.mode, rate=spec.rate, rounds=spec.rounds, cause=cause,
                          **_workload_fields(spec))

    def _death_cause(self) -> str | None:
        """The cell error once the server is dead (remembered: later cells fail fast with it)."""
        if self._dead is None and self.server_status is not None:
            code = self.server_status()
            if code is not None:
                tail = self.log_tail() if self.log_tail is not None else ""
                self._dead = f"server died (exit code {code})" + (
                    f"\n--- last lines of the server log ---\n{tail}" if tail else "")
        return self._dead

    def _call_observers_before(self, spec: CellSpec) -> list[str]:
        warnings = []
        for obs in self.observers:
            try:
                obs.before_cell(spec)
            except Exception as e:  # noqa: BLE001 - an observer never fails a cell
                warnings.append(f"observer {getattr(obs, 'name', obs)!s} before_cell failed: {e!r}")
        return warnings

    def _call_observers_after(self, result: CellResult) -> tuple[dict[str, Any], list[str]]:
        extra: dict[str, Any] = {}
        warnings = []
        for obs in self.observers:
            name = str(getattr(obs, "name", type(obs).__name__))
            try:
                data = obs.after_cell(result)
            except Exception as e:  # noqa: BLE001 - an observer never fails a cell
                warnings.append(f"observer {name} after_cell failed: {e!r}")
                continue
            if data is not None:
                extra[name] = data
        return extra, warnings

    # ---- prompts --------------------------------------------------------------------------------------
    async def _prompt_factory(self, api: str | None = None) -> PromptFactory:
        """Size with the server's /tokenize (it applies the server's own template); else tokenizer_path.
        `api`: the API the prompts are for (default: the runner's)."""
        api = api or self.api
        if api not in self._factories:
            counter: TokenCounter
            if self._http is None:
                self._http = async_client(self.base_url, self.endpoint.api_key)
            if await ServerTokenizer.available(self._http, self.model):
                counter = ServerTokenizer(self._http, self.model, api)
            elif self.tokenizer_path is not None:
                counter = LocalTokenizer(self.tokenizer_path, api)
            else:
                raise SetupError(f"{self.base_url} has no working /tokenize, so prompts cannot be sized to "
                                 "the token\nfix: pass tokenizer_path (a Hugging Face tokenizer directory) to "
                                 "size prompts exactly")
            self._factories[api] = PromptFactory(counter, shared_prefix=self.shared_prefix,
                                                 verify_all=isinstance(counter, LocalTokenizer))
        return self._factories[api]


def _trap_sigint(loop: asyncio.AbstractEventLoop, handler: Callable[[], None]) -> Callable[[], None]:
    """Make SIGINT call `handler` on the loop while it runs; returns the function that undoes it.
    Only the main thread may set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGINT)
    try:
        loop.add_signal_handler(signal.SIGINT, handler)
    except (NotImplementedError, RuntimeError, ValueError):  # no signal support on this loop / platform
        return lambda: None

    def restore() -> None:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        finally:
            signal.signal(signal.SIGINT, previous)

    return restore


def arrival_times(rate: float, duration_s: float, poisson: bool = True, seed: int = 0) -> list[float]:
    """Scheduled request starts in [0, duration_s): exponential gaps (Poisson) or every 1/rate s."""
    if not poisson:
        return [i / rate for i in range(int(rate * duration_s + 1e-9))]
    rng = random.Random(seed)
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration_s and len(out) <= MAX_REQUESTS_PER_CELL:
        out.append(t)
        t += rng.expovariate(rate)
    return out


@dataclasses.dataclass(frozen=True)
class _Launched:
    """A cell's merged records, how the backend ran it (time zero on both clocks), and a server death."""

    merged: MergedCell
    ran: Ran
    died: str | None


def _workload_fields(spec: CellSpec) -> dict[str, Any]:
    """The CellResult fields a workload sets (what, with the rest, makes the cell's key)."""
    key = spec.key
    return {"turns": key.turns, "think_time_s": key.think_time_s, "cache": key.cache, "workload": key.workload,
            "speed": key.speed}


def _with_hit_rate(stats: Any, extra: dict[str, Any], records: Sequence[RequestRecord]) -> Any:
    """The cell's prefix-cache hit rate: the server's /metrics counters, else (a server without them)
    the cached tokens its usage reported per request; None when it said neither."""
    section = extra.get("server_metrics")
    rate = section.get("prefix_cache_hit_rate") if isinstance(section, dict) else None
    if rate is None:
        rate = usage_hit_rate(records)
    return stats if rate is None else dataclasses.replace(stats, prefix_cache_hit_rate=rate)


def _observer_invalid(extra: dict[str, Any]) -> list[str]:
    """The reasons observers gave (a section's "invalid" list) why the cell cannot be vouched for."""
    return [str(reason) for section in extra.values() if isinstance(section, dict)
            for reason in section.get("invalid") or ()]


def _failure_cause(records: Sequence[RequestRecord]) -> str | None:
    """None if any request succeeded; else the commonest error kind with an example detail."""
    if not records:
        return "no requests were run"
    if any(r.ok for r in records):
        return None
    kinds = Counter(r.error for r in records)
    kind, count = kinds.most_common(1)[0]
    detail = next((r.error_detail for r in records if r.error == kind and r.error_detail), "")
    others = ", ".join(f"{k} x{c}" for k, c in kinds.items() if k != kind)
    return (f"all {len(records)} requests failed: {kind} x{count}" + (f" ({others})" if others else "")
            + (f": {detail}" if detail else ""))

