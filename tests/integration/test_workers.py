"""Load worker processes (`--llm-load-workers K`): one start for all, every request once, as accurate on the
wire as one worker; server death, timeouts, Ctrl-C and a crashed worker; the capacity search through them.

No test needs more than two cores: the workers are not pinned here (the session pins them when it pins
the client), and the accuracy cell streams 10k token events/s in all.
"""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmload.errors import SetupError
from pytest_llmload.load.processes import ProcessBackend
from pytest_llmload.load.runner import LoadRunner
from pytest_llmload.session.fixtures import LoadFixture
from pytest_llmload.options import Settings
from pytest_llmload.results import CellSpec
from pytest_llmload.session import LoadSession
from pytest_llmload.testing.fakeserver import FakeServer
from wire import fake_server_process, gone, measure


def runner_for(base_url: str, **kw: object) -> LoadRunner:
    kw.setdefault("progress", False)
    return LoadRunner(base_url, "fake-model", **kw)  # type: ignore[arg-type]


def all_closed(server: FakeServer, within_s: float = 5.0) -> bool:
    deadline = time.perf_counter() + within_s
    while server._protocols and time.perf_counter() < deadline:  # noqa: SLF001
        time.sleep(0.02)
    return not server._protocols  # noqa: SLF001


# ---- the done criterion: 512 users over 2 workers --------------------------------------------------------
@pytest.fixture(scope="module")
def wire_server() -> Iterator[str]:
    # 512 streams x 20 tokens/s: 10k events/s, well within what the fake server and two cores can do.
    with fake_server_process(ttft_ms=100, itl_ms=50) as base:
        yield base


def test_512_users_over_two_workers_start_together_once_each_and_as_accurately_as_one(wire_server: str) -> None:
    with runner_for(wire_server) as one:
        measure(one, wire_server, 16, 31, 5)  # warm: code paths and the first prompts
        single, single_wire = measure(one, wire_server, 512, 31, 20, attempts=3)
    with runner_for(wire_server, workers=2) as two:
        measure(two, wire_server, 16, 31, 5)
        pair, pair_wire = measure(two, wire_server, 512, 31, 20, attempts=3)
        pids = two.backend.pids  # type: ignore[attr-defined]
    assert gone(pids)  # the workers ended with the runner

    for cell in (single, pair):
        assert cell.ok and [r.index for r in cell.records] == list(range(512))  # every request, once
        assert all(r.ok and len(r.chunk_times) == 20 for r in cell.records)
        assert cell.stats is not None and cell.stats.start_spread_s < 0.050  # started within 50 ms
    client = pair.extra["client"]
    assert client["backend"] == "processes" and client["start_spread_s"] < 0.050
    assert [w["requests"] for w in client["workers"]] == [256, 256]
    assert len({w["pid"] for w in client["workers"]}) == 2 and client["barrier_skew_s"] < 0.050

    # As accurate on the wire as one worker: within the client's accuracy targets, or no worse than one
    # worker was in the same conditions.
    assert single_wire.matched == pair_wire.matched == 512
    assert pair_wire.as_accurate_as(single_wire), (single_wire, pair_wire)
    assert pair_wire.lag_first_p50_ms < 5.0, pair_wire  # first tokens timestamped as they arrive


# ---- closed loop with rounds, open loop ---------------------------------------------------------------
def test_rounds_run_one_after_another_within_a_worker(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server.base_url, workers=2) as runner:
        cell = runner.run_cell(CellSpec(users=5, prompt_tokens=20, max_tokens=4, rounds=3))
    assert cell.ok and [r.index for r in cell.records] == list(range(15))
    by_index = {r.index: r for r in cell.records}
    for u in range(5):
        chain = [by_index[r * 5 + u] for r in range(3)]
        assert all(a.end <= b.start for a, b in zip(chain, chain[1:]))
    assert [w["requests"] for w in cell.extra["client"]["workers"]] == [9, 6]


def test_an_open_loop_schedule_split_over_workers_keeps_its_times(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server.base_url, workers=2) as runner:
        cell = runner.run_open_loop(rate=20, duration_s=1.0, prompt_tokens=16, max_tokens=3, poisson=False)
    assert cell.ok and cell.mode == "open" and len(cell.records) == 20
    late = [r.start - r.index * 0.05 for r in cell.records]
    assert min(late) > -0.002 and statistics.median(late) < 0.01  # the loop's timers are ~1 ms coarse
    assert cell.extra["client"]["start_spread_s"] == pytest.approx(max(late))


# ---- faults ---------------------------------------------------------------------------------------------
def test_server_death_stops_every_worker_and_fails_later_cells_fast(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")
    dead_at = time.perf_counter() + 1.5  # after the workers have started and sent their requests
    status = lambda: 137 if time.perf_counter() > dead_at else None  # noqa: E731
    with runner_for(llm_fake_server.base_url, workers=2, server_status=status, request_timeout_s=60,
                    log_tail=lambda: "CUDA out of memory") as runner:
        t = time.perf_counter()
        first = runner.run_cell(CellSpec(users=6, prompt_tokens=16, max_tokens=5, rounds=2))
        second = runner.run_cell_kw(4, 16, 5)
        took = time.perf_counter() - t
    assert took < 10  # not the 60 s request timeout
    assert not first.ok and first.error is not None and first.error.startswith("server died (exit code 137)")
    assert [r.index for r in first.records] == list(range(12))
    assert {r.error for r in first.records} == {"server_died"}  # the second round never connected
    assert not second.ok and second.error == first.error and second.records == ()
    assert all_closed(llm_fake_server)


def test_a_server_death_while_the_workers_start_still_stops_them(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")
    with runner_for(llm_fake_server.base_url, workers=2, request_timeout_s=60) as runner:
        runner._run(runner._prompt_factory())  # noqa: SLF001 - sized first: the death falls in the workers' start
        dead_at = time.perf_counter() + 0.05  # the first cell spawns the workers: that takes longer
        runner.server_status = lambda: 137 if time.perf_counter() > dead_at else None
        t = time.perf_counter()
        cell = runner.run_cell_kw(4, 16, 3)
        assert time.perf_counter() - t < 15  # not the 60 s request timeout
    assert not cell.ok and cell.error is not None and cell.error.startswith("server died (exit code 137)")
    assert all_closed(llm_fake_server)


def test_request_timeouts_apply_in_the_workers(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")
    with runner_for(llm_fake_server.base_url, workers=2, request_timeout_s=0.5) as runner:
        t = time.perf_counter()
        cell = runner.run_cell_kw(4, 16, 3)
        assert time.perf_counter() - t < 10
    assert not cell.ok and [r.error for r in cell.records] == ["timeout"] * 4
    assert all_closed(llm_fake_server)


def test_ctrl_c_stops_the_workers_requests_and_leaves_no_process(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")

    def interrupt_when_all_arrived() -> None:  # a real SIGINT, once every request is out (bounded wait)
        deadline = time.perf_counter() + 20
        while len(llm_fake_server.truth) < 6 and time.perf_counter() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_all_arrived, daemon=True).start()
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with runner_for(llm_fake_server.base_url, workers=2) as runner:
            runner.run_cell_kw(6, 16, 3)
    assert time.perf_counter() - started < 10
    assert len(llm_fake_server.truth) == 6  # the requests were out when Ctrl-C came
    assert all_closed(llm_fake_server)
    assert gone(runner.backend.pids)  # type: ignore[attr-defined]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_crashed_worker_fails_its_cell_and_the_next_cell_has_fresh_workers(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")
    with runner_for(llm_fake_server.base_url, workers=2, request_timeout_s=30) as runner:
        backend = runner.backend
        assert isinstance(backend, ProcessBackend)

        def kill_a_worker() -> None:
            deadline = time.perf_counter() + 20
            while len(llm_fake_server.truth) < 4 and time.perf_counter() < deadline:
                time.sleep(0.02)
            os.kill(backend.pids[1], signal.SIGKILL)

        threading.Thread(target=kill_a_worker, daemon=True).start()
        t = time.perf_counter()
        crashed = runner.run_cell_kw(4, 16, 3)
        assert time.perf_counter() - t < 15
        old = backend.pids
        llm_fake_server.configure(fault=None)
        after = runner.run_cell_kw(4, 16, 3)
        assert not set(backend.pids) & set(old)
    assert not crashed.ok and crashed.error is not None and "load worker 1" in crashed.error
    assert crashed.cause == "client"  # the tool could not measure: not the server's "-"
    assert "exited with -9" in crashed.error
    assert after.ok and len(after.records) == 4


# ---- the capacity search and the session --------------------------------------------------------------
def test_the_capacity_search_runs_through_the_workers(llm_fake_server: FakeServer, tmp_path: Path) -> None:
    settings = Settings(base_url=llm_fake_server.base_url, load_workers=2, report_dir=str(tmp_path), max_tokens=4)
    with LoadSession(settings, rootdir=tmp_path) as session:
        result = LoadFixture(session).max_users(prompt_tokens=16, limit=8, e2e_p95_s=30)
        cells = list(session.run.cells)
    assert result.max_users == 8 and [p.users for p in result.probes] == [1, 2, 4, 8]
    assert all(c.ok and c.extra["client"]["backend"] == "processes" for c in cells)
    assert [len(c.extra["client"]["workers"]) for c in cells] == [1, 2, 2, 2]


def test_workers_that_cannot_start_are_a_setup_error_before_any_request(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server.base_url, workers=2, worker_cpus=(4096,)) as runner:  # no such core
        with pytest.raises(SetupError, match=r"could not start \(--llm-load-workers 2\)(.|\n)*fix: "):
            runner.start()
        with pytest.raises(SetupError):
            runner.run_cell_kw(2, 16, 3)
        pids = runner.backend.pids  # type: ignore[attr-defined]
    assert llm_fake_server.requests_seen == 0 and gone(pids)
