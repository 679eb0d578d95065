"""Load workers as processes of this host: K event loops on K cores, one start for all.

Each worker is a fresh interpreter (`python -m pytest_llmload.load.processes FD CPU`: spawned, never
forked, because the coordinating process has threads), pinned to its own core among the client's, in a
session of its own (a terminal's Ctrl-C reaches only the coordinator, which stops the workers itself).
It talks to the coordinator over a socket pair, length-prefixed pickles:

    coordinator -> worker     ("cell", ShardJob)   ("go", t0)   ("abort", kind, detail)   ("close",)
    worker -> coordinator     ("hello", pid, cpus) ("ready",)   ("progress", ok, failed)
                              ("done", ShardOutcome)            ("error", traceback)

A cell: every worker gets its shard and connects; once all said "ready", the coordinator picks one start
instant `GO_LEAD_S` ahead on CLOCK_MONOTONIC (time.perf_counter: shared by the processes of one Linux
host) and every worker writes its requests at that instant (`worker.SignalledGate`). A worker whose
coordinator disappears (the socket closes) aborts its requests and exits; one that crashes fails the
cell it was running, with the tail of its stderr, and the next cell starts fresh workers.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from ..errors import SetupError
from .client import Endpoint
from .shard import ShardJob, ShardOutcome
from .worker import LoadWorkerError, OnProgress, Ran, ShardRunner, SignalledGate, new_event_loop, wall_clock_at

AUTO_MAX_WORKERS = 8  # `--llm-load-workers auto` never starts more (8 loops read ~400k events/s)
GO_LEAD_S = 0.1  # the start instant lies this far after the last worker said ready: time for "go" to arrive
HELLO_TIMEOUT_S = 60.0  # a fresh interpreter importing the worker code (slow on a busy machine)
DRAIN_TIMEOUT_S = 5.0  # after an abort, how long workers get to close their sockets and report
EXIT_TIMEOUT_S = 5.0
PROGRESS_EVERY_S = 0.25
_HEADER = struct.Struct("!Q")
T = TypeVar("T")


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> Any:
    """One message; asyncio.IncompleteReadError when the other side is gone."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


def auto_workers(cores: int, pinned: bool) -> int:
    """`--llm-load-workers auto`: one worker per core the client may use; when the client is not pinned
    away from the server, one core is left to everything else (the server, the coordinator)."""
    return max(1, min(AUTO_MAX_WORKERS, cores if pinned else cores - 1))


# ---- the coordinator's side ------------------------------------------------------------------------------
class _WorkerProcess:
    """One worker process as the coordinator sees it: its socket, its messages, its stderr file."""

    def __init__(self, index: int, cpu: int | None) -> None:
        self.index = index
        self.cpu = cpu
        self.pid = 0
        self.cpus: list[int] = []
        self.on_progress: OnProgress = lambda ok, failed: None
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix="llmload-worker-")
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p)}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest_llmload.load.processes", str(theirs.fileno()),
                 "-" if cpu is None else str(cpu)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=self._log, env=env, start_new_session=True)
        finally:
            theirs.close()
        self._sock = ours
        self._inbox: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._writer: asyncio.StreamWriter | None = None
        self._pump: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self._sock)
        self._pump = asyncio.ensure_future(self._read_all(reader))
        hello = await self.expect("hello", HELLO_TIMEOUT_S)
        self.pid, self.cpus = hello[1], hello[2]

    async def _read_all(self, reader: asyncio.StreamReader) -> None:
        """Route every message: progress to the cell's callback, the rest to `expect` (never cancelled mid-frame)."""
        try:
            while True:
                message = await _read(reader)
                if message[0] == "progress":
                    self.on_progress(message[1], message[2])
                else:
                    self._inbox.put_nowait(message)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._inbox.put_nowait(("eof",))

    def send(self, *message: Any) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(_frame(message))

    async def expect(self, kind: str, timeout: float | None = None) -> tuple[Any, ...]:
        """The next message, which must be `kind`; LoadWorkerError for an error, a crash or silence."""
        try:
            message = await asyncio.wait_for(self._inbox.get(), timeout)
        except asyncio.TimeoutError:
            raise LoadWorkerError(f"load worker {self.index} said nothing for {timeout:g} s{self._stderr()}") from None
        if message[0] == kind:
            return message
        if message[0] == "error":
            raise LoadWorkerError(f"load worker {self.index} failed: {message[1]}")
        self._inbox.put_nowait(message)  # the end stays the end for whoever waits next
        deadline = time.monotonic() + 1.0  # its socket closes a moment before its exit status is known
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        code = self.proc.poll()
        raise LoadWorkerError(f"load worker {self.index} (pid {self.proc.pid}) "
                              f"{'exited with ' + str(code) if code is not None else 'closed its socket'} "
                              f"while the coordinator waited for {kind!r}{self._stderr()}")

    def _stderr(self, chars: int = 2000) -> str:
        try:
            self._log.seek(0)
            tail = self._log.read().decode(errors="replace")[-chars:].strip()
        except (OSError, ValueError):
            return ""
        return f"\n--- its stderr ---\n{tail}" if tail else ""

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self._pump is not None and not self._pump.done()

    async def stop(self) -> None:
        """Ask it to exit, wait a little, then kill; release the socket and the stderr file."""
        self.send("close")
        deadline = time.monotonic() + EXIT_TIMEOUT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT_S)
        if self._writer is not None:
            self._writer.close()
        if self._pump is not None:
            self._pump.cancel()
        self._sock.close()
        self._log.close()


class ProcessBackend:
    """K load worker processes on this host, started at the first cell and kept for the next ones."""

    name = "processes"

    def __init__(self, workers: int, cpus: Sequence[int] = ()) -> None:
        if workers < 1:
            raise ValueError("load workers must be 1 or more")
        self.workers = workers
        self.cpus = tuple(cpus)  # each worker is pinned to one of these (round-robin); () leaves them unpinned
        self._procs: list[_WorkerProcess] = []
        self._running: list[_WorkerProcess] = []
        self._aborted: tuple[str, str] | None = None  # the last abort of the cell being run

    def size(self) -> int:
        return self.workers

    def _cpu_of(self, k: int) -> int | None:
        return self.cpus[k % len(self.cpus)] if self.cpus else None

    async def start_workers(self) -> None:
        """Start the worker processes now (else the first cell does)."""
        await self._started()

    async def start(self, endpoint: Endpoint) -> None:
        """`start_workers`, with a worker that cannot start as a SetupError (they share this host's network)."""
        try:
            await self._started()
        except LoadWorkerError as exc:
            raise SetupError(
                f"the load worker processes could not start (--llm-load-workers {self.workers}): {exc}\n"
                "fix: the worker's stderr above says why (each runs `python -m pytest_llmload.load.processes` "
                "with this interpreter); --llm-load-workers 1 runs the load in this process instead") from exc

    async def _started(self) -> list[_WorkerProcess]:
        if self._procs and all(p.alive for p in self._procs):
            return self._procs
        await self.aclose()  # a worker died since the last cell: start all afresh
        self._procs = [_WorkerProcess(k, self._cpu_of(k)) for k in range(self.workers)]
        try:
            await asyncio.gather(*(p.connect() for p in self._procs))
        except BaseException:
            await self.aclose()
            raise
        return self._procs

    async def run(self, jobs: Sequence[ShardJob], on_progress: OnProgress) -> Ran:
        await self.start_cell(jobs, on_progress)
        t0 = time.perf_counter() + GO_LEAD_S
        self.go(t0)
        return Ran(await self.finish(), t0, wall_clock_at(t0))

    # The phases of `run`, apart, for a coordinator that picks the start itself (a Ray actor: raycluster.py).
    async def start_cell(self, jobs: Sequence[ShardJob], on_progress: OnProgress) -> None:
        """Hand out the shards; return once every worker is connected and waits for "go"."""
        self._aborted = None
        procs = (await self._started())[:len(jobs)]
        self._running = procs
        try:
            for proc, job in zip(procs, jobs):
                proc.on_progress = on_progress
                proc.send("cell", job)
            if self._aborted is not None:  # the server died (or Ctrl-C) while the workers were starting
                self.abort(*self._aborted)
            await _all(p.expect("ready") for p in procs)
        except BaseException:  # cancelled (Ctrl-C), or a worker failed: stop every worker's requests
            await self.stop_cell()
            raise

    @property
    def running(self) -> bool:
        """Whether a cell was started and has not finished or been stopped."""
        return bool(self._running)

    def go(self, t0: float) -> None:
        """Every worker writes its requests at `t0` (a perf_counter() instant: CLOCK_MONOTONIC)."""
        for proc in self._running:
            proc.send("go", t0)

    async def finish(self) -> list[ShardOutcome]:
        """The workers' outcomes, once each has ended its shard."""
        try:
            done = await _all(p.expect("done") for p in self._running)
        except BaseException:
            await self.stop_cell()
            raise
        self._running = []
        return [d[1] for d in done]

    async def stop_cell(self) -> None:
        """Abort the running cell and wait (bounded) until its workers have closed their sockets."""
        procs = self._running
        self.abort("timeout", "cell cancelled")
        await self._drain(procs)
        self._running = []

    async def _drain(self, procs: Sequence[_WorkerProcess]) -> None:
        """After an abort: let the workers close their sockets and report; kill those that do not."""
        async def one(proc: _WorkerProcess) -> None:
            try:
                await proc.expect("done", DRAIN_TIMEOUT_S)
            except LoadWorkerError:
                await proc.stop()

        await asyncio.gather(*(one(p) for p in procs), return_exceptions=True)

    def abort(self, kind: str, detail: str) -> None:
        self._aborted = (kind, detail)  # for a cell still starting: its workers get it once they have it
        for proc in self._running:
            proc.send("abort", kind, detail)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name}

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for tests: none may outlive `aclose`)."""
        return [p.proc.pid for p in self._procs]

    async def aclose(self) -> None:
        procs, self._procs = self._procs, []
        await asyncio.gather(*(p.stop() for p in procs), return_exceptions=True)


async def _all(waits: Iterable[Awaitable[T]]) -> list[T]:
    """Like gather, but the first failure cancels the other waits (so none is left to swallow a later
    message that the drain after an abort waits for)."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
    failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None), None)
    if failed is not None:
        raise failed.exception()  # type: ignore[misc]
    return [task.result() for task in tasks]


# ---- the worker's side ---------------------------------------------------------------------------------
class _Cell:
    """The shard a worker runs now, with its gate and its progress reports."""

    def __init__(self, job: ShardJob, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.counts = [0, 0]
        self.sent = [0, 0]
        self.gate = SignalledGate(lambda: self.send("ready"))
        self.shard = ShardRunner(job, self._count)
        self.task = asyncio.ensure_future(self._run())

    def send(self, *message: Any) -> None:
        if not self.writer.is_closing():
            self.writer.write(_frame(message))

    def _count(self, ok: bool) -> None:
        self.counts[0 if ok else 1] += 1

    def _report(self) -> None:
        if self.counts != self.sent:
            self.send("progress", self.counts[0] - self.sent[0], self.counts[1] - self.sent[1])
            self.sent = list(self.counts)

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self._report()

    async def _run(self) -> None:
        reporter = asyncio.ensure_future(self._progress())
        try:
            outcome = await self.shard.run(self.gate)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - handed to the coordinator, which fails the cell with it
            self.send("error", traceback.format_exc(limit=8))
            return
        finally:
            reporter.cancel()
        self._report()
        self.send("done", outcome)
        await self.writer.drain()


async def _serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    writer.write(_frame(("hello", os.getpid(), sorted(os.sched_getaffinity(0)))))
    cell: _Cell | None = None
    try:
        while True:
            message = await _read(reader)
            if message[0] == "cell":
                cell = _Cell(message[1], writer)
            elif message[0] == "go" and cell is not None:
                cell.gate.open_at(message[1])
            elif message[0] == "abort" and cell is not None:
                cell.shard.abort(message[1], message[2])
                cell.gate.open_at(time.perf_counter())  # a shard still waiting for "go" ends now too
            elif message[0] == "close":
                return
    except (asyncio.IncompleteReadError, ConnectionError):
        return  # the coordinator is gone: stop (the finally closes every socket)
    finally:
        if cell is not None and not cell.task.done():
            cell.shard.abort("timeout", "load worker stopped")
            cell.task.cancel()
            await asyncio.gather(cell.task, return_exceptions=True)
        writer.close()


def _raise_open_files_limit() -> None:
    """One connection per stream: a worker with thousands of streams needs more than the usual 1024 files."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass  # not Linux, or not allowed: connections beyond the limit fail as `connect`, counted


def main(argv: Sequence[str] | None = None) -> None:
    """Entry of a worker process: `python -m pytest_llmload.load.processes FD CPU|-`."""
    fd, cpu = (argv if argv is not None else sys.argv[1:])[:2]
    if cpu != "-":
        os.sched_setaffinity(0, {int(cpu)})
    _raise_open_files_limit()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides when a cell stops
    sock = socket.socket(fileno=int(fd))
    loop = new_event_loop()
    try:
        loop.run_until_complete(_serve(sock))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
