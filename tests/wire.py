"""The truth on the wire, for tests of the load workers: the fake server in its own process (so that it
shares no interpreter with the client under test) and the pairing of client records with what the server
did (`GET /fake/truth`, CLOCK_MONOTONIC like the client), as `benchmarks/bench_accuracy.py` does."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_llmload.load.runner import LoadRunner
from pytest_llmload.results import CellResult
from pytest_llmload.testing.fakeserver import prompt_key

ROOT = Path(__file__).resolve().parents[1]


def http_json(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def gone(pids: list[int], within_s: float = 5.0) -> bool:
    """Whether every one of these processes has exited (waiting up to `within_s`)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


@contextmanager
def fake_server_process(ttft_ms: float, itl_ms: float) -> Iterator[str]:
    """A fake server in a process of its own (uvloop); yields its base URL, stops it at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pytest_llmload.testing.fakeserver", "--port", str(port),
                             "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms), "--uvloop", "--duration-s", "600"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fake server did not start (exit code {proc.poll()})")
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass(frozen=True)
class Wire:
    """A cell against the server's truth: the client's error per request, in milliseconds."""

    matched: int
    e2e_delta_pct: float  # client E2E p50 against the wire truth's (client write -> server [DONE])
    ttft_delta_ms: float  # client TTFT p50 minus the wire truth's
    itl_delta_ms: float  # client ITL mean minus the mean gap between the server's writes
    lag_first_p50_ms: float  # client arrival of the first token minus the server's write of it
    lag_end_p50_ms: float  # client end minus the server's write of [DONE]
    lag_end_p99_ms: float


    def errors(self) -> tuple[float, float, float]:
        """|ΔE2E p50| %, |ΔTTFT p50| ms, |ΔITL mean| ms."""
        return abs(self.e2e_delta_pct), abs(self.ttft_delta_ms), abs(self.itl_delta_ms)

    def as_accurate_as(self, reference: Wire) -> bool:
        """Within benchmarks/bench_accuracy.py's targets (E2E p50 2 %, TTFT p50 5 ms, ITL mean 0.5 ms) or,
        where a busy shared machine pushed the reference past one, no more than 1.5 times its error."""
        return all(mine <= max(target, 1.5 * theirs)
                   for mine, theirs, target in zip(self.errors(), reference.errors(), TARGETS))


TARGETS = (2.0, 5.0, 0.5)  # the accuracy targets of benchmarks/bench_accuracy.py, in Wire.errors() units


def measure(runner: LoadRunner, base: str, users: int, prompt_tokens: int, max_tokens: int,
            attempts: int = 1) -> tuple[CellResult, Wire]:
    """A cell, paired request by request with the server's truth through the prompts. With `attempts` > 1,
    a cell whose client says it was disturbed (invalid: another process took its core on this shared
    machine) is measured again, at most that many times in all; the last one is returned regardless."""
    factory = runner._run(runner._prompt_factory())  # noqa: SLF001 - prompts sized (and cached) first
    prompts = [p.text for p in runner._run(factory.prompts(prompt_tokens, users))]  # noqa: SLF001
    for _ in range(attempts):
        http_json(base + "/fake/reset", {})
        cell = runner.run_cell_kw(users, prompt_tokens, max_tokens)
        if cell.valid:
            break
    assert runner.last_t0 is not None
    return cell, compare(cell, prompts, http_json(base + "/fake/truth"), runner.last_t0)


def compare(cell: CellResult, prompts: Sequence[str], truth: list[dict[str, Any]], t0: float) -> Wire:
    by_key = {t["key"]: t for t in truth}
    pairs = [(r, by_key[prompt_key(prompts[r.index])]) for r in cell.records if r.ok]
    pairs = [(r, t) for r, t in pairs if t["sends"] and t["done"] and r.first_token is not None]
    med = statistics.median
    wire_e2e = med(t["done"] - (t0 + r.start) for r, t in pairs)
    wire_ttft = med(t["sends"][0] - (t0 + r.start) for r, t in pairs)
    lag_end = sorted((t0 + r.end - t["done"]) * 1e3 for r, t in pairs)
    server_itl = statistics.fmean(b - a for _, t in pairs for a, b in zip(t["sends"], t["sends"][1:]))
    assert cell.e2e is not None and cell.ttft is not None and cell.itl is not None
    return Wire(matched=len(pairs), e2e_delta_pct=(cell.e2e.p50 / wire_e2e - 1) * 100,
                ttft_delta_ms=(cell.ttft.p50 - wire_ttft) * 1e3, itl_delta_ms=(cell.itl.mean - server_itl) * 1e3,
                lag_first_p50_ms=med((t0 + r.first_token - t["sends"][0]) * 1e3 for r, t in pairs),  # type: ignore[operator]
                lag_end_p50_ms=med(lag_end), lag_end_p99_ms=lag_end[int(0.99 * (len(lag_end) - 1))])
