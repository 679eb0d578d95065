"""Every cell checks itself: the loop monitor, the rules that make a cell invalid, and the fault for real
(a busy process on the client's core, bounded in time) against the fake server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_llmload.load.selfcheck import ClientCheck, LoopMonitor, judge, spread_limit_s
from pytest_llmload.server.placement import allowed_cpus


def check(**changes: object) -> ClientCheck:
    values: dict[str, object] = dict(wall_s=1.0, cpu_s=0.2, runqueue_wait_s=0.0, max_loop_lag_s=0.004,
                                     heartbeats=200, start_spread_s=0.001, cpus=(1,))
    values.update(changes)
    return ClientCheck(**values)  # type: ignore[arg-type]


def test_the_monitor_sees_a_stalled_loop() -> None:
    async def cell() -> ClientCheck:
        monitor = LoopMonitor()
        monitor.start()
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # the loop is blocked: nothing can be read meanwhile
        await asyncio.sleep(0.05)
        return monitor.stop(start_spread_s=0.0)

    seen = asyncio.run(cell())
    assert seen.max_loop_lag_s >= 0.14 and seen.heartbeats >= 5
    assert seen.cpu_s >= 0.0 and 0.24 <= seen.wall_s < 5
    assert seen.cpus == allowed_cpus()


def test_a_quiet_loop_has_little_lag() -> None:
    async def cell() -> ClientCheck:
        monitor = LoopMonitor()
        monitor.start()
        await asyncio.sleep(0.2)
        return monitor.stop(start_spread_s=0.0)

    seen = asyncio.run(cell())
    assert seen.heartbeats >= 10 and seen.max_loop_lag_s < 0.2


def test_a_cancelled_monitor_leaves_no_heartbeat_behind() -> None:
    async def cell() -> int:
        monitor = LoopMonitor()
        monitor.start()
        monitor.cancel()
        await asyncio.sleep(0.05)
        return monitor.stop(0.0).heartbeats

    assert asyncio.run(cell()) == 0


def test_the_spread_limit_is_50_ms_or_5_percent_of_the_e2e_p50() -> None:
    assert spread_limit_s(None) == spread_limit_s(0.4) == 0.05
    assert spread_limit_s(4.0) == pytest.approx(0.2)


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"start_spread_s": 0.322}, "requests did not start together: start spread 322 ms > 50 ms"),
    ({"max_loop_lag_s": 0.3, "runqueue_wait_s": 0.28}, "stalled for 300 ms (> 50 ms)"),
    ({"cpu_s": 0.97}, "the client was saturated: its event loop was busy 97%"),
])
def test_each_rule_gives_its_reason(changes: dict[str, object], fragment: str) -> None:
    [reason] = judge(check(**changes), e2e_p50_s=0.5)
    assert fragment in reason
    assert judge(check(), e2e_p50_s=0.5) == ()


def test_a_stall_names_the_wait_for_a_cpu_and_observer_and_prompt_reasons_join() -> None:
    reasons = judge(check(max_loop_lag_s=0.3, runqueue_wait_s=0.28), 0.5, ["server disagrees"], 2, 31)
    assert "it waited 280 ms for a CPU (another process had its core)" in reasons[0]
    assert reasons[1] == "2 request(s) did not carry a prompt of 31 tokens (usage.prompt_tokens differs)"
    assert reasons[2] == "server disagrees"
    assert judge(check(cpu_s=0.15, wall_s=0.1), 0.5) == ()  # too short a cell to call saturated


# ----- the fault for real: a busy process on the client's core


CLIENT = """
import json, os, subprocess, sys, time
from pytest_llmload.load.runner import LoadRunner
cpu = int(sys.argv[2])
os.sched_setaffinity(0, {cpu})
# The busy process gets the core whenever it wants it, as vLLM's hot compute thread did to a client that
# shared its core: the client runs at idle priority (an unprivileged process may lower its own).
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
hog = sys.argv[3] == "hog"


# Busy in bursts of 150 ms with 50 ms pauses, for at most 4 s: the idle-priority client runs only in the
# pauses, so its event loop stalls for ~150 ms at a time (a hog that never pauses would freeze it whole,
# and the cell would only run once the hog is gone).
HOG = (
    "import time\\n"
    "print('spinning', flush=True)\\n"
    "end = time.monotonic() + 4\\n"
    "while time.monotonic() < end:\\n"
    "    burst = time.monotonic() + 0.15\\n"
    "    while time.monotonic() < burst: pass\\n"
    "    time.sleep(0.05)\\n"
)


class Hog:
    # On the client's own core from right before the cell's requests are launched (the cell's set-up,
    # starved too, would otherwise take the hog's time) until the cell ends.

    name = "hog"

    def before_cell(self, spec):
        if hog and spec.max_tokens == 40:
            self.busy = subprocess.Popen(
                [sys.executable, "-c", HOG],
                stdout=subprocess.PIPE, text=True,
                preexec_fn=lambda: os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0)))
            self.busy.stdout.readline()  # past its start-up: spinning from here on

    def after_cell(self, result):
        if getattr(self, "busy", None) is not None:
            self.busy.kill()
            self.busy.wait()
            self.busy = None
        return None

    def close(self):
        pass


with LoadRunner(sys.argv[1], "fake-model", progress=False, observers=[Hog()]) as runner:
    runner.run_cell_kw(16, 16, 2)  # the 16 prompts sized (and cached) and code paths warm before the cell
    cell = runner.run_cell_kw(16, 16, 40)
print(json.dumps({"ok": cell.ok, "valid": cell.valid, "reasons": cell.invalid_reasons,
                  "client": cell.extra["client"]}))
"""


def _run_client(base_url: str, cpu: int, hog: bool) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CLIENT, base_url, str(cpu), "hog" if hog else "-"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert out.returncode == 0, out.stderr[-2000:]
    result: dict[str, object] = json.loads(out.stdout.splitlines()[-1])
    return result


@pytest.mark.skipif(len(allowed_cpus()) < 2, reason="needs two CPUs: the fake server on one, the client on another")
def test_a_busy_process_on_the_clients_core_makes_the_cell_invalid(llm_fake_server) -> None:
    llm_fake_server.configure(ttft_ms=50, itl_ms=10)
    # The server (a thread of this process) on another core than the client and the hog: the hog must
    # disturb the client, not slow the server down.
    thread = llm_fake_server._thread
    assert thread is not None and thread.native_id is not None
    os.sched_setaffinity(thread.native_id, {allowed_cpus()[0]})
    disturbed = _run_client(llm_fake_server.base_url, allowed_cpus()[-1], hog=True)
    assert disturbed["ok"] is True and disturbed["valid"] is False, disturbed
    reasons = " ".join(disturbed["reasons"])  # type: ignore[arg-type]
    assert "stalled" in reasons or "did not start together" in reasons, reasons
