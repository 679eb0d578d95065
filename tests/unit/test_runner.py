"""The runner: cells, matrices, observers, server death, cancellation, open loop; one real-vLLM cell."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from typing import Any

import pytest

from pytest_llmload.errors import SetupError
from pytest_llmload.testing.fakeserver import FakeServer
from pytest_llmload.results import CellResult, CellSpec
from pytest_llmload.load.runner import CellObserver, LoadRunner, arrival_times


def runner_for(server: FakeServer, **kw: Any) -> LoadRunner:
    kw.setdefault("progress", False)
    return LoadRunner(server.base_url, "fake-model", **kw)


def all_closed(server: FakeServer, within_s: float = 5.0) -> bool:
    """Whether the server saw every connection closed (it learns of it a moment after the client)."""
    deadline = time.perf_counter() + within_s
    while server._protocols and time.perf_counter() < deadline:  # noqa: SLF001
        time.sleep(0.02)
    return not server._protocols  # noqa: SLF001


def test_a_cell_measures_every_request(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server) as runner:
        cell = runner.run_cell_kw(8, 40, 12)
    assert cell.ok and cell.error is None and cell.cause is None and len(cell.records) == 8
    assert sorted(r.index for r in cell.records) == list(range(8))
    for r in cell.records:
        assert r.ok and r.output_tokens == 12 and len(r.chunk_times) == 12
        assert r.prompt_tokens == r.expected_prompt_tokens == 40
        assert r.start <= r.first_token <= r.chunk_times[-1] <= r.end  # type: ignore[operator]
    assert cell.stats is not None and cell.stats.prompt_tokens_mismatches == 0
    assert cell.ttft is not None and cell.ttft.p50 >= 0.02  # the fake waits 20 ms
    assert cell.itl is not None and 0.0015 < cell.itl.mean < 0.01
    assert cell.stats.start_spread_s < 0.05


def test_chat_api(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server, api="chat") as runner:
        cell = runner.run_cell_kw(3, 60, 5)
    assert cell.ok and all(r.prompt_tokens == 60 and len(r.chunk_times) == 5 for r in cell.records)


def test_rounds_send_requests_one_after_another(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server) as runner:
        cell = runner.run_cell(CellSpec(users=3, prompt_tokens=20, max_tokens=5, rounds=3))
    assert cell.ok and len(cell.records) == 9
    by_index = {r.index: r for r in cell.records}
    for u in range(3):
        chain = [by_index[r * 3 + u] for r in range(3)]
        assert all(a.end <= b.start for a, b in zip(chain, chain[1:]))


def test_a_failing_cell_does_not_stop_the_matrix(llm_fake_server: FakeServer) -> None:
    seen: list[CellResult] = []
    with runner_for(llm_fake_server) as runner:
        cells = runner.run_matrix([1, 2], [16, 5000], max_tokens=4, on_cell=seen.append)
    assert seen == cells and [(c.users, c.prompt_tokens) for c in cells] == [(1, 16), (2, 16), (1, 5000), (2, 5000)]
    assert [c.ok for c in cells] == [True, True, False, False]
    assert cells[2].error is not None and "http_400" in cells[2].error and "maximum context length" in cells[2].error
    assert cells[2].cause == "server"  # the study's "-": the prompt does not fit the model


def test_prompt_size_mismatch_is_recorded_not_hidden(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server) as runner:
        runner.run_cell_kw(2, 30, 2)
        factory = runner._factories["completions"]  # noqa: SLF001 - to make the sizing lie
        assert factory is not None
        factory._cache[30] = [type(p)(p.text, 29) for p in factory._cache[30]]  # noqa: SLF001
        cell = runner.run_cell_kw(2, 30, 2)
    assert cell.ok and cell.stats is not None and cell.stats.prompt_tokens_mismatches == 2
    assert all((r.expected_prompt_tokens, r.prompt_tokens) == (29, 30) for r in cell.records)


class _Observer:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.calls: list[str] = []

    def before_cell(self, spec: CellSpec) -> None:
        self.calls.append(f"before {spec.users}")

    def after_cell(self, result: CellResult) -> dict[str, Any] | None:
        self.calls.append(f"after {len(result.records)}")
        if self.fail:
            raise RuntimeError("telemetry broke")
        return {"seen": len(result.records)}

    def close(self) -> None:
        self.calls.append("close")


def test_observers_fill_extra_and_never_fail_a_cell(llm_fake_server: FakeServer) -> None:
    good, bad = _Observer("gpu"), _Observer("metrics", fail=True)
    assert isinstance(good, CellObserver)
    with runner_for(llm_fake_server, observers=[good, bad]) as runner:
        cell = runner.run_cell_kw(2, 16, 3)
    assert cell.ok and good.calls == ["before 2", "after 2"] and bad.calls == ["before 2", "after 2"]
    assert cell.extra["gpu"] == {"seen": 2} and "metrics" not in cell.extra
    assert "telemetry broke" in cell.extra["warnings"][0]


def test_server_death_cancels_the_cell_and_fails_later_cells_fast(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")
    dead_at = time.perf_counter() + 0.5
    status = lambda: 137 if time.perf_counter() > dead_at else None  # noqa: E731
    with runner_for(llm_fake_server, server_status=status, log_tail=lambda: "CUDA out of memory",
                    request_timeout_s=60) as runner:
        t = time.perf_counter()
        cells = runner.run_matrix([4, 8], [16], max_tokens=5)
        took = time.perf_counter() - t
    first, second = cells
    assert took < 5  # not the 60 s request timeout
    assert not first.ok and first.error is not None and first.error.startswith("server died (exit code 137)")
    assert "CUDA out of memory" in first.error
    assert [r.error for r in first.records] == ["server_died"] * 4
    assert not second.ok and second.error == first.error and second.records == ()
    assert first.cause == second.cause == "server"
    assert all_closed(llm_fake_server)


def test_cancelling_a_cell_closes_every_connection(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")
    with runner_for(llm_fake_server) as runner:
        async def go() -> None:
            task = asyncio.ensure_future(runner.arun_cell(CellSpec(users=5, prompt_tokens=16, max_tokens=3)))
            deadline = time.perf_counter() + 10
            while len(llm_fake_server.truth) < 5 and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        runner._run(go())  # noqa: SLF001 - the runner's own loop
    assert len(llm_fake_server.truth) == 5 and all_closed(llm_fake_server)


def test_keyboard_interrupt_closes_every_connection(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")
    main = threading.get_ident()
    import _thread

    def interrupt_when_all_arrived() -> None:
        deadline = time.perf_counter() + 10
        while len(llm_fake_server.truth) < 4 and time.perf_counter() < deadline:
            time.sleep(0.02)
        _thread.interrupt_main()

    assert threading.get_ident() == main
    threading.Thread(target=interrupt_when_all_arrived, daemon=True).start()
    with runner_for(llm_fake_server) as runner, pytest.raises(KeyboardInterrupt):
        runner.run_cell_kw(4, 16, 3)
    assert all_closed(llm_fake_server)


def test_a_real_sigint_during_a_cell_raises_keyboard_interrupt(llm_fake_server: FakeServer) -> None:
    """uvloop handles signals in its own callbacks; a Ctrl-C must still end the run, not be logged away."""
    import os
    import signal

    llm_fake_server.configure(fault="hang")
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    started = time.perf_counter()
    with runner_for(llm_fake_server) as runner, pytest.raises(KeyboardInterrupt):
        runner.run_cell_kw(4, 16, 3)
    assert time.perf_counter() - started < 5
    assert all_closed(llm_fake_server)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # pytest's handler is back


def test_open_loop_constant_rate(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server) as runner:
        cell = runner.run_open_loop(rate=20, duration_s=1.0, prompt_tokens=16, max_tokens=3, poisson=False)
    assert cell.ok and cell.mode == "open" and cell.rate == 20 and len(cell.records) == 20
    starts = sorted(r.start for r in cell.records)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert abs(statistics.mean(gaps) - 0.05) < 0.005 and max(abs(g - 0.05) for g in gaps) < 0.05


def test_open_loop_poisson(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server) as runner:
        cell = runner.run_open_loop(rate=40, duration_s=1.0, prompt_tokens=16, max_tokens=2, seed=3)
    assert cell.ok and len(cell.records) == len(arrival_times(40, 1.0, True, 3))
    planned = arrival_times(40, 1.0, True, 3)
    starts = sorted(r.start for r in cell.records)
    late = sorted(abs(s - p) for s, p in zip(starts, planned))
    assert late[len(late) // 2] < 0.01 and late[-1] < 0.1  # generous: this machine is shared and busy


def test_arrival_times() -> None:
    assert arrival_times(4, 1.0, poisson=False) == [0.0, 0.25, 0.5, 0.75]
    many = arrival_times(1000, 10.0, poisson=True, seed=1)
    gaps = [b - a for a, b in zip(many, many[1:])]
    assert 9500 < len(many) < 10500
    assert abs(statistics.mean(gaps) - 0.001) < 0.00005 and abs(statistics.stdev(gaps) - 0.001) < 0.0001
    assert arrival_times(5, 2.0, seed=7) == arrival_times(5, 2.0, seed=7)


def test_bad_cells_are_refused_as_failed_cells(llm_fake_server: FakeServer) -> None:
    with runner_for(llm_fake_server) as runner:
        cell = runner.run_cell(CellSpec(users=0, prompt_tokens=16))
    assert not cell.ok and cell.error is not None and "users >= 1" in cell.error and cell.cause == "setup"
    with pytest.raises(ValueError):
        LoadRunner(llm_fake_server.base_url, "m", api="embeddings")


def test_without_tokenize_the_local_tokenizer_sizes_prompts(llm_fake_server: FakeServer, tmp_path: Any) -> None:
    from test_workload import _tokenizer_dir

    def refuse(self: Any, req: dict[str, Any]) -> None:
        self.reply(404, b'{"error": {"message": "no /tokenize here"}}')

    import pytest_llmload.testing.fakeserver as fs

    original = fs._HTTPServerProtocol.tokenize
    fs._HTTPServerProtocol.tokenize = refuse  # type: ignore[method-assign]  # as a hosted API: no /tokenize
    try:
        with runner_for(llm_fake_server) as runner:  # a fault of the set-up, not a cell the server failed
            with pytest.raises(SetupError, match="no working /tokenize(.|\n)*fix: pass tokenizer_path"):
                runner.run_cell_kw(1, 16, 2)
        with runner_for(llm_fake_server, tokenizer_path=str(_tokenizer_dir(tmp_path))) as runner:
            cell = runner.run_cell_kw(2, 50, 2)
    finally:
        fs._HTTPServerProtocol.tokenize = original  # type: ignore[method-assign]
    # The fake server counts with its own tokenizer, so sizes differ: recorded and counted, never hidden.
    assert cell.ok and all(r.expected_prompt_tokens == 50 for r in cell.records)
    assert cell.stats is not None
    assert cell.stats.prompt_tokens_mismatches == sum(r.prompt_tokens != 50 for r in cell.records)
