"""Load workers as Ray actors (`--llm-load-cluster ray`) on a REAL local Ray cluster with two CPUs, against
the fake server: one start for all (a wall-clock barrier), every request once, as accurate on the wire as
one worker, the barrier skew and clock offsets reported; server death; the cluster's resources given back.

Ray is the optional extra `ray` (the `dev` extra includes it). As with a missing vLLM, a missing Ray
fails these tests with the install command rather than skipping them silently.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pytest_llmload.errors import ConfigError, SetupError
from pytest_llmload.load import raycluster
from pytest_llmload.load.runner import LoadRunner
from pytest_llmload.results import CellSpec
from pytest_llmload.testing.fakeserver import FakeServer
from wire import fake_server_process, gone, measure

try:
    import ray as _ray
except ImportError as exc:
    pytest.fail(f"Ray is not installed ({exc}): pip install -e '.[dev]' (or '.[ray]'); or deselect this module",
                pytrace=False)
ray: Any = _ray


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray with two CPUs for this module (starting one takes 5-20 s on two cores); the two-node
    module starts a cluster of its own after it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def given_back(cluster: Any, within_s: float = 15.0) -> float | None:
    """The cluster's free CPUs once they are all free again (the resource view lags a little)."""
    deadline = time.monotonic() + within_s
    while (free := cluster.available_resources().get("CPU")) != 2.0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return free  # type: ignore[no-any-return]


def ray_runner(base_url: str, **kw: Any) -> LoadRunner:
    return LoadRunner(base_url, "fake-model", progress=False, cluster="ray", workers=2, **kw)


def test_512_users_over_two_ray_actors_start_together_once_each_and_as_accurately_as_one(ray_cluster: Any) -> None:
    with fake_server_process(ttft_ms=100, itl_ms=50) as base:
        with LoadRunner(base, "fake-model", progress=False) as one:
            measure(one, base, 16, 31, 5)
            _, single_wire = measure(one, base, 512, 31, 20, attempts=3)
        with ray_runner(base) as actors:
            measure(actors, base, 16, 31, 5)  # the actors start and warm up
            cell, wire = measure(actors, base, 512, 31, 20, attempts=3)
        free = given_back(ray_cluster)
    assert cell.ok and [r.index for r in cell.records] == list(range(512))  # every request, once
    assert all(r.ok and len(r.chunk_times) == 20 for r in cell.records)
    assert cell.stats is not None and cell.stats.start_spread_s < 0.050  # started within 50 ms
    client = cell.extra["client"]
    assert client["backend"] == "ray" and [w["requests"] for w in client["workers"]] == [256, 256]
    assert len({w["pid"] for w in client["workers"]}) == 2 and os.getpid() not in {w["pid"] for w in client["workers"]}
    assert client["barrier_skew_s"] < 0.050 and 0 <= client["clock_uncertainty_s"] < 0.050
    assert set(client["clock"]["offsets_ms"]) == {"0", "1"}  # one host: a shared wall clock, offsets ~0
    assert all(abs(v) < 50 for v in client["clock"]["offsets_ms"].values())
    assert cell.t0_unix_ns is not None and abs(cell.t0_unix_ns / 1e9 - time.time()) < 120
    assert wire.matched == 512 and wire.as_accurate_as(single_wire), (single_wire, wire)
    assert free == 2.0  # the actors and their placement group were given back


def test_rounds_open_loop_and_server_death_through_actors(ray_cluster: Any, llm_fake_server: FakeServer) -> None:
    with ray_runner(llm_fake_server.base_url) as runner:
        rounds = runner.run_cell(CellSpec(users=4, prompt_tokens=16, max_tokens=3, rounds=2))
        open_loop = runner.run_open_loop(rate=20, duration_s=0.5, prompt_tokens=16, max_tokens=2, poisson=False)
    assert rounds.ok and [r.index for r in rounds.records] == list(range(8))
    assert open_loop.ok and len(open_loop.records) == 10 and open_loop.extra["client"]["start_spread_s"] < 0.05

    llm_fake_server.configure(fault="hang")
    dead_at = time.perf_counter() + 3.0
    status = lambda: 137 if time.perf_counter() > dead_at else None  # noqa: E731
    with ray_runner(llm_fake_server.base_url, server_status=status, request_timeout_s=60) as runner:
        t = time.perf_counter()
        died = runner.run_cell_kw(4, 16, 3)
        assert time.perf_counter() - t < 20  # not the 60 s request timeout
    assert not died.ok and died.error is not None and died.error.startswith("server died (exit code 137)")
    assert [r.error for r in died.records] == ["server_died"] * 4


def test_a_crashed_worker_and_ctrl_c_leave_no_process_behind(ray_cluster: Any, llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="hang")
    with ray_runner(llm_fake_server.base_url, request_timeout_s=30) as runner:
        backend = runner.backend
        assert isinstance(backend, raycluster.RayBackend) and backend.size() == 2
        first = [h["pid"] for h in backend._hello]  # noqa: SLF001 - the actors' worker processes

        def when_all_arrived(then: Callable[[], None]) -> None:
            seen = len(llm_fake_server.truth)
            deadline = time.perf_counter() + 20
            while len(llm_fake_server.truth) < seen + 4 and time.perf_counter() < deadline:
                time.sleep(0.02)
            then()

        threading.Thread(target=when_all_arrived, args=(lambda: os.kill(first[1], signal.SIGKILL),), daemon=True).start()
        crashed = runner.run_cell_kw(4, 16, 3)
        assert not crashed.ok and crashed.error is not None and crashed.cause == "client"
        assert crashed.error.startswith("Ray load actor 1 failed: load worker 0") and "exited with -9" in crashed.error
        second = [h["pid"] for h in backend._hello]  # noqa: SLF001
        assert not set(second) & set(first) and gone(first)  # fresh actors for the next cell

        threading.Thread(target=when_all_arrived, args=(lambda: os.kill(os.getpid(), signal.SIGINT),),
                         daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            runner.run_cell_kw(4, 16, 3)
        second = [h["pid"] for h in backend._hello]  # noqa: SLF001
    assert gone(second) and given_back(ray_cluster) == 2.0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    deadline = time.perf_counter() + 5
    while llm_fake_server._protocols and time.perf_counter() < deadline:  # noqa: SLF001
        time.sleep(0.02)
    assert not llm_fake_server._protocols  # noqa: SLF001 - every connection closed


def test_a_server_on_loopback_is_refused_for_actors_on_other_nodes(ray_cluster: Any) -> None:
    backend = raycluster.RayBackend(2)
    backend._hello = [{"node_id": "another-node", "host": "gpu-7", "pid": 1, "cpus": [0]}]  # noqa: SLF001
    with pytest.raises(SetupError, match="127.0.0.1, this host's loopback, but load actors run on other "
                                         r"nodes \(gpu-7; node another-node\)(.|\n)*fix: .*--llm-host "):
        backend._check_reachable("127.0.0.1")  # noqa: SLF001
    backend._check_reachable("192.0.2.7")  # noqa: SLF001 - an address, not this host's loopback: theirs to reach


def test_without_ray_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ray(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr("pytest_llmload.load.raycluster.importlib.import_module", no_ray)
    with pytest.raises(ConfigError, match=r"pip install 'pytest-llmload\[ray\]'"):
        LoadRunner("http://127.0.0.1:9", "m", cluster="ray")
