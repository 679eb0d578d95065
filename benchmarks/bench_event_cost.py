"""Client CPU per streamed event when every SSE event arrives in its own read, as a real server sends them.

A server process (pinned to CPU 1, uvloop) streams the fake server's vLLM-shaped completion chunks:
chunked transfer encoding, one `data: {...}\\n\\n` event per HTTP chunk, one chunk per write, one token
every `--itl-ms` per stream, so a connection has at most one event waiting when the client reads it:
one event per read, which every run checks by counting read(2) calls against events. Two pacings:

- `step`: a purpose-built sender (in this file) writes one token to every open stream in one tight loop
  every ITL, the way vLLM's API server writes the tokens of a decode step: bursts of N writes.
- `timer`: `pytest_llmload.testing.fakeserver`: every stream on its own timer from its request's arrival, so the
  writes are spread over the ITL and the client often sleeps between two events.

The client (this process, pinned to CPU 0, uvloop like the runner) takes its own CPU time, user and
system apart (`resource.getrusage`), over a window in the middle of the streams (no connects, no stream
ends), and divides it by the events that arrived in the window. Variants, each run once per repeat and
configuration, in a rotated order, against the same server:

- `floor-empty`: an asyncio.Protocol whose `data_received` takes the timestamp and adds up the bytes:
  what uvloop, the kernel and one Python call cost per read. No client on this loop can do less.
- `floor-find`: the same plus one `bytes.find` for the event's end and the timestamp appended to a
  list: the floor of a timing SSE client.
- `floor-buffered`: `floor-empty` as an asyncio.BufferedProtocol (uvloop reads into our buffer: no
  bytes object per read, but two Python calls per read, `get_buffer` and `buffer_updated`).
- `before`: `StreamProtocol` of the client at `--before-ref` (loaded from git).
- `after`: `StreamProtocol` of the working tree's client.

The machine is shared: a run in which the client or the server waited for a CPU more than 5 % of the
window, or that did not get one event per read, is kept in the JSON but left out of the medians.
Also measured: the parser alone (`data_received` of one token chunk, in-process, no I/O).

    .venv/bin/python benchmarks/bench_event_cost.py           # ~8 min; writes results/event_cost.{json,md}
    .venv/bin/python benchmarks/bench_event_cost.py --quick   # 1 repeat, short windows, writes nothing

Every wait is bounded (connects, the window, stream ends, the servers' own `--duration-s`), every loop
is bounded in count, and only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pytest_llmload.load import client as client_after  # noqa: E402
from pytest_llmload.testing import fakeserver  # noqa: E402
from common import free_port  # noqa: E402

MODEL = "fake-model"
SERVER_CPU, CLIENT_CPU = 1, 0
BEFORE_REF = "ee1ed63"  # main before the cheaper event: the client the changes are measured against
BEFORE_PATH = "pytest_llmload/load/client.py"  # where the client was at BEFORE_REF
VARIANTS = ("floor-empty", "floor-find", "floor-buffered", "before", "after")
PACINGS = ("step", "timer")
MAX_WAITED = 0.05  # default: a run whose client or server waited for a CPU longer than this is not clean
METRICS = ("us_per_event", "user_us_per_event", "sys_us_per_event", "events_per_s", "reads_per_event",
           "wakeups_per_event", "segments_per_event", "cpu_share", "run_delay_share", "server_run_delay_share")
# Differences of two variants in the same repeat (adjacent runs): less exposed to drifts in the machine.
PAIRS = (("before", "after"), ("before", "floor-find"), ("after", "floor-find"), ("floor-find", "floor-empty"),
         ("floor-buffered", "floor-empty"))

Factory = Callable[[asyncio.Future[None]], Any]


# ---- the bytes a server sends ---------------------------------------------------------------------------------
def sse_chunk(obj: Any) -> bytes:
    data = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


def server_bytes(api: str) -> dict[str, bytes]:
    """The fake server's exact bytes: response head (+ the chat role chunk), token chunk, last token chunk."""
    proto = fakeserver._HTTPServerProtocol(fakeserver.FakeServer())
    (tok, last, first), _ = proto.stream_chunks(api == "chat")
    head = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")
    return {"head": head + first, "token": tok, "last": last}


# ---- the `step` sender (its own process) ------------------------------------------------------------------------
class _StepStream(asyncio.Protocol):
    """One connection of the step sender: reads one request, then gets tokens from `StepSender.step`."""

    def __init__(self, sender: StepSender) -> None:
        self.sender = sender
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.left = 0  # tokens still to send

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.left or self.transport is None or len(self.buf) > 65536:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        m = re.search(rb"(?i)content-length:\s*(\d+)", self.buf[:end]) if end >= 0 else None
        if m is None or len(self.buf) < end + 4 + int(m.group(1)):
            return
        body = json.loads(self.buf[end + 4:end + 4 + int(m.group(1))])
        self.left = max(1, int(body.get("max_tokens") or 16))
        self.transport.write(self.sender.bytes["head"])
        self.sender.streams.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class StepSender:
    """Every `itl_s`, one token chunk to every open stream, in one tight loop (a decode step's writes)."""

    def __init__(self, api: str, itl_s: float) -> None:
        self.bytes = server_bytes(api)
        self.itl_s = itl_s
        self.streams: list[_StepStream] = []

    def step(self) -> None:
        still = []
        for s in self.streams:
            t = s.transport
            if t is None:
                continue
            s.left -= 1
            if s.left > 0:
                t.write(self.bytes["token"])
                still.append(s)
            else:  # the last token, usage, [DONE], the end of the body: what the fake server sends
                usage = {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}
                t.write(self.bytes["last"] + sse_chunk({"id": "cmpl-fake", "choices": [], "usage": usage})
                        + b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
                t.close()
        self.streams = still

    async def serve(self, port: int, duration_s: float) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _StepStream(self), "127.0.0.1", port, backlog=4096)
        due = loop.time()
        deadline = due + duration_s
        while due < deadline:  # on an absolute schedule: a late step does not shift the next ones
            due += self.itl_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.step()
        server.close()


class Servers:
    """The step sender and the fake server, each pinned to SERVER_CPU, each exiting by itself after
    `duration_s`; one that died (killed by someone else's clean-up, say) is started again."""

    def __init__(self, a: argparse.Namespace, duration_s: float, log_dir: Path) -> None:
        self.a, self.duration_s, self.log_dir = a, duration_s, log_dir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self.restarts: list[dict[str, Any]] = []
        for pacing in sorted({p for p, _ in a.configs}):
            self.start(pacing)

    def start(self, pacing: str) -> None:
        a, port = self.a, free_port()
        if pacing == "step":
            cmd = [sys.executable, __file__, "--serve-step", str(port), "--itl-ms", str(a.itl_ms), "--api", a.api,
                   "--duration-s", str(self.duration_s)]
        else:
            cmd = [sys.executable, "-m", fakeserver.__name__, "--port", str(port), "--ttft-ms", str(a.ttft_ms),
                   "--itl-ms", str(a.itl_ms), "--cpu", str(SERVER_CPU), "--uvloop", "--duration-s",
                   str(self.duration_s)]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"server-{pacing}.log", "ab") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(proc, port)
        if pacing == "timer":  # the fake server's truth records would keep every token time of every run
            http_post(f"http://127.0.0.1:{port}/fake/config", {"record_truth": False})
        self.procs[pacing] = (proc, port)

    def ensure(self, pacing: str) -> None:
        proc, _ = self.procs[pacing]
        if proc.poll() is not None:
            self.restarts.append({"pacing": pacing, "returncode": proc.returncode, "at": time.time()})
            print(f"the {pacing} server exited with {proc.returncode}: starting it again", flush=True)
            self.start(pacing)

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            proc.terminate()
            proc.wait(10)


def wait_for_port(proc: subprocess.Popen[bytes], port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server on port {port} not ready in {timeout_s:g} s")


def http_post(url: str, body: dict[str, Any]) -> None:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        r.read()


# ---- the protocols measured ---------------------------------------------------------------------------------------
class FloorEmpty(asyncio.Protocol):
    """Timestamp and byte count per read: the cost of the loop, the kernel and one Python call."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.transport: asyncio.BaseTransport | None = None
        self.now = 0.0
        self.nbytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.now = time.perf_counter()
        self.nbytes += len(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class FloorFind(FloorEmpty):
    """FloorEmpty plus what any timing SSE client does: one byte search for the end of the event, and the
    timestamp kept in a list (a float object per event, a growing list per stream)."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        super().__init__(done)
        self.times: list[float] = []

    def data_received(self, data: bytes) -> None:
        self.now = now = time.perf_counter()
        if data.find(b"\n\n") >= 0:
            self.times.append(now)
            self.nbytes += len(data)


class FloorBuffered(asyncio.BufferedProtocol):
    """FloorEmpty as a BufferedProtocol: uvloop reads into our buffer, no bytes object per read."""

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.transport: asyncio.BaseTransport | None = None
        self.now = 0.0
        self.nbytes = 0
        self.buf = memoryview(bytearray(65536))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.now = time.perf_counter()
        self.nbytes += nbytes

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def load_client(ref: str, path: str = BEFORE_PATH) -> types.ModuleType:
    """The client module as it was at git `ref`, importable next to the current one."""
    src = subprocess.run(["git", "show", f"{ref}:{path}"], cwd=ROOT, check=True, capture_output=True,
                         text=True, timeout=30).stdout
    name = "pytest_llmload._client_at_" + "".join(c if c.isalnum() else "_" for c in ref)
    mod = types.ModuleType(name)
    mod.__package__ = path.rsplit("/", 1)[0].replace("/", ".")  # its relative imports resolve in the current package
    sys.modules[name] = mod  # dataclasses look their module up here
    exec(compile(src, f"{ref}:{path}", "exec"), mod.__dict__)  # noqa: S102 - our own file, our own repo
    return mod


def counting(cls: Any) -> Factory:
    """`cls` with a count of its `data_received` calls (for the read check only: the count costs time)."""
    class Counting(cls):  # type: ignore[misc]
        reads = 0

        def data_received(self, data: bytes) -> None:
            self.reads += 1
            super().data_received(data)

    return Counting


# ---- counters of this process and of the machine ------------------------------------------------------------------
def read_syscalls() -> int:
    """read(2) calls of this process so far: libuv makes one per `data_received` (and stops at a short read)."""
    with open("/proc/self/io", "rb") as f:
        for line in f:
            if line.startswith(b"syscr:"):
                return int(line.split()[1])
    return 0


def tcp_out_segments() -> int:
    """TCP segments sent on the whole machine (loopback: the server's data and the client's ACKs)."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


def run_delay_s(pid: int | str = "self") -> float:
    """Time a (single-threaded) process has waited for a CPU while runnable: the shared machine's toll."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except OSError:
        return 0.0


def snapshot(server_pid: int) -> dict[str, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"t": time.perf_counter(), "user": ru.ru_utime, "sys": ru.ru_stime, "wakeups": ru.ru_nvcsw,
            "preempted": ru.ru_nivcsw, "reads": read_syscalls(), "segments": tcp_out_segments(),
            "run_delay": run_delay_s(), "server_run_delay": run_delay_s(server_pid)}


def busy_share(seconds: float = 2.0) -> float:
    """The share of all CPUs' time not idle over `seconds` (`/proc/stat`): is someone else working?"""
    def sample() -> list[int]:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]

    a = sample()
    time.sleep(seconds)
    b = sample()
    d = [y - x for x, y in zip(a, b, strict=True)]
    return 1 - (d[3] + d[4]) / max(1, sum(d))  # idle + iowait


def wait_quiet(max_s: float, busy_max: float = 0.1) -> float:
    """Wait (at most `max_s`) until the machine is idle but for us; returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_s and busy_share() > busy_max:
        pass
    return time.monotonic() - t0


# ---- one run: N streams, a window in their middle -----------------------------------------------------------------
async def open_stream(factory: Factory, port: int) -> tuple[Any, asyncio.Future[None]]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    proto = factory(done)
    transport, _ = await asyncio.wait_for(loop.create_connection(lambda: proto, "127.0.0.1", port), 30)
    transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return proto, done


async def one_run(factory: Factory, count: Callable[[Sequence[Any]], int], port: int, server_pid: int,
                  streams: int, a: argparse.Namespace) -> tuple[dict[str, float], list[Any]]:
    """Open `streams` connections, send every request, measure a window in the middle of the streams."""
    opened = await asyncio.gather(*(open_stream(factory, port) for _ in range(streams)))
    protos = [p for p, _ in opened]
    for p in protos:  # every connection open first, then all requests in one tight loop, as the runner does
        p.transport.write(a.request)
    await asyncio.sleep(max(a.ttft_ms, a.itl_ms) / 1000 + a.warmup_s)
    c0 = count(protos)  # counted outside the window's CPU time
    s0 = snapshot(server_pid)
    await asyncio.sleep(a.window_s)
    s1 = snapshot(server_pid)
    c1 = count(protos)
    await asyncio.wait_for(asyncio.gather(*(d for _, d in opened)), a.tokens * a.itl_ms / 1000 + 30)
    res = {k: s1[k] - s0[k] for k in s0}
    res["events"] = c1 - c0
    return res, protos


def run_once(factory: Factory, count: Callable[[Sequence[Any]], int], port: int, server_pid: int, streams: int,
             a: argparse.Namespace) -> tuple[dict[str, float], list[Any]]:
    loop = uvloop.new_event_loop()  # what the runner uses
    try:
        return loop.run_until_complete(one_run(factory, count, port, server_pid, streams, a))
    finally:
        loop.close()


def summarize(r: dict[str, float], max_waited: float, **labels: Any) -> dict[str, Any]:
    n = r["events"] or 1
    s = {**labels, "window_s": r["t"], "events": r["events"],
         "us_per_event": (r["user"] + r["sys"]) / n * 1e6, "user_us_per_event": r["user"] / n * 1e6,
         "sys_us_per_event": r["sys"] / n * 1e6, "events_per_s": r["events"] / r["t"],
         "reads_per_event": r["reads"] / n, "wakeups_per_event": r["wakeups"] / n,
         "segments_per_event": r["segments"] / n, "cpu_share": (r["user"] + r["sys"]) / r["t"],
         "run_delay_share": r["run_delay"] / r["t"], "server_run_delay_share": r["server_run_delay"] / r["t"],
         "preempted": r["preempted"], "loadavg": os.getloadavg()[0]}
    s["one_per_read"] = 0.98 <= s["reads_per_event"] <= 1.02
    s["clean"] = (s["one_per_read"] and s["run_delay_share"] <= max_waited
                  and s["server_run_delay_share"] <= max_waited)
    return s


class Bench:
    def __init__(self, a: argparse.Namespace, servers: Servers, before: types.ModuleType | None) -> None:
        self.a, self.servers, self.before = a, servers, before
        self.chunk_len = len(server_bytes(a.api)["token"])

    def setup(self, variant: str) -> tuple[Factory, Callable[[Sequence[Any]], int]]:
        """The protocol factory of a variant and how to count the events its protocols have seen."""
        floors: dict[str, Factory] = {"floor-empty": FloorEmpty, "floor-find": FloorFind,
                                      "floor-buffered": FloorBuffered}
        if variant in floors:  # the window holds nothing but token chunks, all of one length
            return floors[variant], lambda ps: sum(p.nbytes for p in ps) // self.chunk_len
        mod = self.before if variant == "before" else client_after
        assert mod is not None
        return mod.StreamProtocol, lambda ps: sum(len(p.chunk_times) for p in ps)

    def run(self, variant: str, pacing: str, streams: int, repeat: int) -> dict[str, Any]:
        factory, count = self.setup(variant)
        self.servers.ensure(pacing)
        proc, port = self.servers.procs[pacing]
        r, _ = run_once(factory, count, port, proc.pid, streams, self.a)
        return summarize(r, self.a.max_waited, variant=variant, pacing=pacing, streams=streams, repeat=repeat)

    def read_check(self, variant: str, pacing: str, streams: int) -> dict[str, Any]:
        """`data_received` calls per event of a real parser in the window, counted by a subclass (in a run
        of its own: the count costs time)."""
        factory, count = self.setup(variant)
        calls: list[int] = []

        def count_both(ps: Sequence[Any]) -> int:
            calls.append(sum(p.reads for p in ps))
            return count(ps)

        self.servers.ensure(pacing)
        proc, port = self.servers.procs[pacing]
        r, _ = run_once(counting(factory), count_both, port, proc.pid, streams, self.a)
        events, reads = r["events"], calls[1] - calls[0]
        return {"variant": variant, "pacing": pacing, "streams": streams, "data_received": reads,
                "content_events": events, "data_received_per_event": reads / events if events else None,
                "read_syscalls_per_event": r["reads"] / events if events else None,
                "client_waited": r["run_delay"] / r["t"], "server_waited": r["server_run_delay"] / r["t"]}


# ---- the parser alone ---------------------------------------------------------------------------------------------
class _NoTransport:
    def close(self) -> None:
        pass


def _parser_fed(mod: types.ModuleType, loop: asyncio.AbstractEventLoop, head: bytes) -> Any:
    p = mod.StreamProtocol(loop.create_future())
    p.connection_made(_NoTransport())
    p.data_received(head)
    return p


def parse_costs(before: types.ModuleType | None, n: int = 20_000, rounds: int = 40) -> dict[str, dict[str, float]]:
    """ns per `data_received(one whole token chunk)`, no I/O, on the fake server's chunks and on chunks
    that differ outside their text (a server that numbers its chunks, say: `after`'s per-stream template
    never matches those). Before and after alternate in short rounds and the best round counts: the
    machine is shared, and a round that another process interrupted is only slower."""
    comp, chat = server_bytes("completions"), server_bytes("chat")
    numbered = [comp["token"].replace(b'"cmpl-fake"', b'"cmpl-fak%d"' % i) for i in range(10)]
    cases = {"completions": (comp["head"], [comp["token"]]), "chat": (chat["head"], [chat["token"]]),
             "completions, numbered chunks": (comp["head"], numbered)}
    mods = {"after_ns": client_after} | ({"before_ns": before} if before is not None else {})
    out: dict[str, dict[str, float]] = {}
    loop = asyncio.new_event_loop()
    try:
        for name, (head, chunks) in cases.items():
            reads = [chunks[i % len(chunks)] for i in range(n)]
            best = dict.fromkeys(mods, float("inf"))
            for _ in range(rounds):
                for key, mod in mods.items():
                    p = _parser_fed(mod, loop, head)
                    feed = p.data_received
                    t = time.perf_counter()
                    for chunk in reads:
                        feed(chunk)
                    best[key] = min(best[key], (time.perf_counter() - t) / n * 1e9)
                    if len(p.chunk_times) != n or p.error is not None:
                        raise RuntimeError(f"{mod.__name__} missed chunks: {len(p.chunk_times)} of {n}, {p.error}")
            out[name] = best
    finally:
        loop.close()
    return out


# ---- report -------------------------------------------------------------------------------------------------------
def medians(runs: list[dict[str, Any]], configs: Sequence[tuple[str, int]], kept: str) -> list[dict[str, Any]]:
    """Per configuration and variant, the medians of the runs flagged `kept` ("clean" or "one_per_read")."""
    out = []
    for pacing, streams in configs:
        for v in VARIANTS:
            rs = [r for r in runs if (r["variant"], r["pacing"], r["streams"]) == (v, pacing, streams)]
            ok = [r for r in rs if r[kept]]
            m: dict[str, Any] = {"variant": v, "pacing": pacing, "streams": streams, "runs": len(rs), "kept": len(ok)}
            if ok:
                m.update({k: statistics.median(r[k] for r in ok) for k in METRICS})
                m["range_us_per_event"] = (min(r["us_per_event"] for r in ok), max(r["us_per_event"] for r in ok))
            if rs:
                out.append(m)
    return out


def paired(runs: list[dict[str, Any]], configs: Sequence[tuple[str, int]], kept: str) -> list[dict[str, Any]]:
    """Median over the repeats of (a - b) in µs/event, both runs flagged `kept` and from the same repeat."""
    out = []
    by_key = {(r["variant"], r["pacing"], r["streams"], r["repeat"]): r for r in runs if r[kept]}
    repeats = sorted({r["repeat"] for r in runs})
    for pacing, streams in configs:
        for a, b in PAIRS:
            d = [by_key[(a, pacing, streams, i)]["us_per_event"] - by_key[(b, pacing, streams, i)]["us_per_event"]
                 for i in repeats if (a, pacing, streams, i) in by_key and (b, pacing, streams, i) in by_key]
            if d:
                out.append({"pacing": pacing, "streams": streams, "a": a, "b": b, "pairs": len(d),
                            "median_us": statistics.median(d), "min_us": min(d), "max_us": max(d)})
    return out


def enough_clean(runs: list[dict[str, Any]], configs: Sequence[tuple[str, int]], variants: Sequence[str],
                 need: int = 3) -> bool:
    """Has every variant at least `need` clean runs in every configuration?"""
    return all(sum(1 for r in runs if (r["variant"], r["pacing"], r["streams"]) == (v, p, n) and r["clean"]) >= need
               for p, n in configs for v in variants)


def machine() -> dict[str, Any]:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": model,
            "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "uvloop": version("uvloop"), "client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU,
            "loadavg_at_start": os.getloadavg()}


def _f(x: Any, fmt: str = "{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


def _median_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| pacing | streams | variant | runs kept | µs/event (min-max) | user µs | sys µs | events/s | "
             "client core busy | waited client / server | reads/event | wakeups/event | segments/event |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if not r["kept"]:
            lines.append(f"| {r['pacing']} | {r['streams']} | {r['variant']} | 0/{r['runs']} |"
                         + " - |" * 9)
            continue
        lo, hi = r["range_us_per_event"]
        lines.append(
            f"| {r['pacing']} | {r['streams']} | {r['variant']} | {r['kept']}/{r['runs']} | "
            f"**{r['us_per_event']:.2f}** ({lo:.2f}-{hi:.2f}) | {r['user_us_per_event']:.2f} | "
            f"{r['sys_us_per_event']:.2f} | {r['events_per_s']:,.0f} | {r['cpu_share'] * 100:.0f} % | "
            f"{r['run_delay_share'] * 100:.1f} / {r['server_run_delay_share'] * 100:.1f} % | "
            f"{r['reads_per_event']:.3f} | {r['wakeups_per_event']:.3f} | {r['segments_per_event']:.2f} |")
    return lines


def _paired_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| pacing | streams | a - b | pairs | median | min | max |", "|---|---|---|---|---|---|---|"]
    for p in rows:
        lines.append(f"| {p['pacing']} | {p['streams']} | {p['a']} - {p['b']} | {p['pairs']} | "
                     f"**{p['median_us']:+.2f}** | {p['min_us']:+.2f} | {p['max_us']:+.2f} |")
    return lines


def markdown(rep: dict[str, Any]) -> str:
    m, c = rep["machine"], rep["config"]
    lines = [f"# Client CPU per streamed event, one event per read ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, uvloop {m['uvloop']}, "
             f"{m['platform']}; client on CPU {m['client_cpu']}, server on CPU {m['server_cpu']}; load average "
             f"(1 min) at start {m['loadavg_at_start'][0]:.2f}, at end {m['loadavg_at_end'][0]:.2f}.",
             f"Server: {c['api']} chunks of {c['chunk_bytes']} bytes, one per write, one per stream every "
             f"{c['itl_ms']:g} ms; window {c['window_s']:g} s in the middle of each run; {c['repeats_run']} repeats; "
             f"`before` = `{c['before_ref']}`.", "",
             "Medians over the repeats. A run is clean when the client and the server each waited for a CPU at "
             f"most {c['max_waited']:.0%} of the window and it got 0.98-1.02 reads per event. µs/event = (user + "
             "sys CPU of the client process in the window) / events; user and sys are split by the kernel's tick "
             "sampling (250 Hz), their sum is exact. reads/event: read(2) calls per event (`/proc/self/io`); "
             "wakeups/event: voluntary context switches (the loop going to sleep in epoll_wait) per event; "
             "segments/event: TCP segments sent on the machine per event (2 = the server's data plus one ACK "
             "from the client per read); waited: the share of the window the client / the server was runnable "
             "but another process had its core (`/proc/PID/schedstat`).", ""]
    for kept, title in (("clean", "Clean runs"), ("one_per_read", "Every run with one event per read, clean or "
                                                   "not (the machine is shared: see the waited column)")):
        lines += [f"## {title}", "", *_median_table(rep["medians"][kept]), "",
                  "Paired differences (µs/event, a minus b, two runs of the same repeat):", "",
                  *_paired_table(rep["paired"][kept]), ""]
    lines += ["## Checks", "",
              "Read check (a separate run of each parser with a counting subclass; the window only):", "",
              "| pacing | streams | variant | data_received calls | content events | calls/event | "
              "read(2)/event | waited client / server |", "|---|---|---|---|---|---|---|---|"]
    for r in rep["read_check"]:
        lines.append(f"| {r['pacing']} | {r['streams']} | {r['variant']} | {r['data_received']:,} | "
                     f"{r['content_events']:,} | {_f(r['data_received_per_event'], '{:.4f}')} | "
                     f"{_f(r['read_syscalls_per_event'], '{:.4f}')} | {r['client_waited'] * 100:.1f} / "
                     f"{r['server_waited'] * 100:.1f} % |")
    lines += ["", "The parser alone (`data_received` of one whole token chunk per call, in-process, no I/O; "
              "best of 40 alternating rounds of 20,000):", "", "| chunks | before ns | after ns |", "|---|---|---|"]
    for name, r in rep["parse_ns"].items():
        lines.append(f"| {name} | {_f(r.get('before_ns'), '{:.0f}')} | {r['after_ns']:.0f} |")
    return "\n".join(lines) + "\n"


NOTES_MARK = "<!-- notes: written by hand; the benchmark keeps what follows when it rewrites this file -->"


def kept_notes(path: Path) -> str:
    """The hand-written part of an earlier results file (conclusions, decisions), to keep on a rerun."""
    old = path.read_text() if path.exists() else ""
    i = old.find(NOTES_MARK)
    return "\n" + old[i:] if i >= 0 else ""


# ---- main ---------------------------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", dest="config_specs", default="step:512,step:1024,timer:512",
                    help="comma-separated PACING:STREAMS (pacing: step or timer)")
    ap.add_argument("--itl-ms", type=float, default=20.0)
    ap.add_argument("--ttft-ms", type=float, default=50.0, help="timer pacing: first token after the request")
    ap.add_argument("--warmup-s", type=float, default=1.0, help="after the first token, before the window")
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-repeats", type=int, default=12,
                    help="repeat beyond --repeats (up to this many) while a variant has fewer than 3 clean runs")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--max-waited", type=float, default=MAX_WAITED,
                    help="a run is clean when client and server each waited for a CPU at most this share of it")
    ap.add_argument("--before-ref", default=BEFORE_REF, help="git ref of the client called `before`")
    ap.add_argument("--quiet-wait-s", type=float, default=60.0,
                    help="before each block of runs, wait up to this long for the CPUs to be 90 %% idle")
    ap.add_argument("--quiet-budget-s", type=float, default=1200.0, help="total of those waits")
    ap.add_argument("--api", choices=("completions", "chat"), default="completions")
    ap.add_argument("--quick", action="store_true", help="1 repeat, short windows, nothing written")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--render", metavar="JSON", help="only rewrite the .md next to JSON from its runs")
    ap.add_argument("--serve-step", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the sender process
    ap.add_argument("--duration-s", type=float, default=600.0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.quick:
        a.repeats, a.window_s, a.warmup_s, a.quiet_budget_s = 1, 1.0, 0.5, 0.0
    a.repeats = max(1, min(a.repeats, 50))
    a.max_repeats = max(a.repeats, min(a.max_repeats, 50)) if not a.quick else a.repeats
    a.window_s = max(0.5, min(a.window_s, 60.0))
    a.itl_ms = max(1.0, a.itl_ms)
    a.configs = []
    for spec in a.config_specs.split(","):
        pacing, _, n = spec.partition(":")
        if pacing not in PACINGS or not n.isdigit():
            ap.error(f"bad config {spec!r}: PACING:STREAMS, pacing one of {', '.join(PACINGS)}")
        a.configs.append((pacing, max(1, min(int(n), 4096))))
    a.variants = [v for v in a.variants.split(",") if v]
    if set(a.variants) - set(VARIANTS):
        ap.error(f"unknown variants {sorted(set(a.variants) - set(VARIANTS))}; known: {', '.join(VARIANTS)}")
    # Tokens per stream: warmup, window, and 1 s after it, so that no stream ends inside the window.
    a.tokens = int((max(a.ttft_ms, a.itl_ms) / 1000 + a.warmup_s + a.window_s + 1.0) * 1000 / a.itl_ms)
    return a


def serve_step(a: argparse.Namespace) -> None:
    os.sched_setaffinity(0, {SERVER_CPU})
    uvloop.run(StepSender(a.api, a.itl_ms / 1000).serve(a.serve_step, min(a.duration_s, 3600.0)))


def summarize_runs(rep: dict[str, Any]) -> None:
    """Medians and paired differences of `rep["runs"]`, clean runs only and every run with one event per read."""
    configs = [tuple(c) for c in rep["config"]["configs"]]
    runs = rep["runs"]
    for r in runs:  # files written before the flag existed
        r.setdefault("one_per_read", 0.98 <= r["reads_per_event"] <= 1.02)
    rep["config"]["repeats_run"] = 1 + max((r["repeat"] for r in runs), default=-1)
    rep["medians"] = {kept: medians(runs, configs, kept) for kept in ("clean", "one_per_read")}
    rep["paired"] = {kept: paired(runs, configs, kept) for kept in ("clean", "one_per_read")}


def render(path: Path) -> None:
    rep = json.loads(path.read_text())
    summarize_runs(rep)
    path.write_text(json.dumps(rep, indent=1) + "\n")
    md = path.with_suffix(".md")
    md.write_text(markdown(rep) + kept_notes(md))
    print(f"wrote {path} and {md}")


def main() -> None:
    a = parse_args()
    if a.serve_step:
        serve_step(a)
        return
    if a.render:
        render(Path(a.render))
        return
    os.sched_setaffinity(0, {CLIENT_CPU})
    before = load_client(a.before_ref) if "before" in a.variants else None
    a.request = client_after.http_request(
        client_after.Endpoint.from_url("http://127.0.0.1:1"), client_after.api_path(a.api),
        client_after.request_body(a.api, MODEL, "one two three", a.tokens))
    rep: dict[str, Any] = {"machine": machine(), "config": {
        "configs": a.configs, "itl_ms": a.itl_ms, "ttft_ms": a.ttft_ms, "tokens": a.tokens, "api": a.api,
        "warmup_s": a.warmup_s, "window_s": a.window_s, "repeats": a.repeats, "before_ref": a.before_ref,
        "chunk_bytes": len(server_bytes(a.api)["token"]), "max_waited": a.max_waited}}
    print(f"load average at start: {rep['machine']['loadavg_at_start']}", flush=True)
    if a.quiet_budget_s > 0:
        a.quiet_budget_s -= wait_quiet(min(a.quiet_wait_s, a.quiet_budget_s))
    rep["parse_ns"] = parse_costs(before)
    print(f"parser alone, ns per one-chunk read: {json.dumps(rep['parse_ns'])}", flush=True)
    per_run = a.tokens * a.itl_ms / 1000 + 10
    out = Path(a.out)
    log_dir = Path(tempfile.gettempdir()) / "bench_event_cost"  # the servers' output, for a post-mortem
    servers = Servers(a, 120 + per_run * (a.max_repeats + 1) * len(a.variants) * len(a.configs), log_dir)
    bench = Bench(a, servers, before)
    rep["runs"], rep["failed_runs"] = [], []
    try:
        rep["read_check"] = []
        for p, n in a.configs:
            if a.quiet_budget_s > 0:
                a.quiet_budget_s -= wait_quiet(min(a.quiet_wait_s, a.quiet_budget_s))
            rep["read_check"] += [bench.read_check(v, p, n) for v in ("before", "after") if v in a.variants]
        for r in rep["read_check"]:
            print(f"read check: {json.dumps(r)}", flush=True)
        run_all(a, bench, rep, out)
    finally:
        servers.stop()
    rep["server_restarts"] = servers.restarts
    rep["machine"]["loadavg_at_end"] = os.getloadavg()
    print(f"load average at end: {rep['machine']['loadavg_at_end']}", flush=True)
    summarize_runs(rep)
    print(markdown(rep))
    if not a.quick:
        save(rep, out)
        print(f"wrote {out / 'event_cost.json'} and .md")


def run_all(a: argparse.Namespace, bench: Bench, rep: dict[str, Any], out: Path) -> None:
    """Every repeat: each configuration, each variant once (rotated); saved after each run."""
    runs: list[dict[str, Any]] = rep["runs"]
    quiet_budget = a.quiet_budget_s  # what the parser and read checks left
    for i in range(a.max_repeats):
        if i >= a.repeats and enough_clean(runs, a.configs, a.variants):
            break
        for j, (pacing, n) in enumerate(a.configs):
            if quiet_budget > 0:  # the machine is shared: start a block of runs in a quiet moment
                quiet_budget -= wait_quiet(min(a.quiet_wait_s, quiet_budget))
            k = (i * len(a.configs) + j) % len(a.variants)
            for v in a.variants[k:] + a.variants[:k]:  # rotated: drifts in the machine's load hit all alike
                try:
                    s = bench.run(v, pacing, n, i)
                except (OSError, RuntimeError, asyncio.TimeoutError) as e:  # a server died mid-run, say
                    rep["failed_runs"].append({"variant": v, "pacing": pacing, "streams": n, "repeat": i,
                                               "error": repr(e)})
                    print(f"{pacing:5s} {n:5d} {v:15s} rep {i}: failed: {e!r}", flush=True)
                    continue
                runs.append(s)
                print(f"{pacing:5s} {n:5d} {v:15s} rep {i}: {s['us_per_event']:6.2f} µs/event (user "
                      f"{s['user_us_per_event']:.2f}, sys {s['sys_us_per_event']:.2f}), "
                      f"{s['events_per_s']:,.0f}/s, {s['reads_per_event']:.3f} reads, "
                      f"{s['wakeups_per_event']:.3f} wakeups, {s['segments_per_event']:.2f} segments per event, "
                      f"waited {s['run_delay_share'] * 100:.1f} / {s['server_run_delay_share'] * 100:.1f} %"
                      f"{'' if s['clean'] else ' (not clean)'}, load {s['loadavg']:.2f}", flush=True)
                if not a.quick:  # a crash or a kill later loses nothing measured so far
                    save({**rep, "partial": True}, out)


def save(rep: dict[str, Any], out: Path) -> None:
    rep = dict(rep)
    rep.setdefault("machine", {}).setdefault("loadavg_at_end", os.getloadavg())
    summarize_runs(rep)
    out.mkdir(parents=True, exist_ok=True)
    (out / "event_cost.json").write_text(json.dumps(rep, indent=1) + "\n")
    (out / "event_cost.md").write_text(markdown(rep) + kept_notes(out / "event_cost.md"))


if __name__ == "__main__":
    main()
