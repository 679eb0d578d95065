"""`--llm-load-cluster ray` on a Ray cluster of two nodes on this host (`ray.cluster_utils.Cluster`: a head
and a second node, each its own raylet with one CPU), against the fake server:

- the load actors land on both nodes (STRICT_SPREAD);
- a server on this host's loopback is a SetupError naming the fix before any request (an actor on the other
  node could never reach it), from the engine and from a pytest session as users run it;
- a server on an address the actors reach gives one record per request and a valid cell, from both nodes.

The two nodes share this host, so an address of its network interface stands for "an address the other
nodes reach"; without one (a machine with loopback only) the reachable case cannot be shown and fails
saying so. Every step is bounded: placement and start by `raycluster.PLACEMENT_TIMEOUT_S`, requests by
`request_timeout_s`, the whole module by `MODULE_DEADLINE_S`.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from pytest_llmload.errors import SetupError
from pytest_llmload.load.raycluster import RayBackend
from pytest_llmload.load.runner import LoadRunner
from pytest_llmload.testing.fakeserver import FakeConfig, FakeServer

try:
    import ray as _ray
    from ray.cluster_utils import Cluster
except ImportError as exc:
    pytest.fail(f"Ray is not installed ({exc}): pip install -e '.[dev]' (or '.[ray]'); or deselect this module",
                pytrace=False)
ray: Any = _ray

MODULE_DEADLINE_S = 420  # two raylets and four actor processes start in 20-60 s on two busy cores
USERS = 64


def _interface_address() -> str | None:
    """An IPv4 address of this host that is not loopback (the one a default route would use), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only asks the routing table
            address: str = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.fixture(scope="module", autouse=True)
def _bounded() -> Iterator[None]:
    """The module may not hang a CI run: SIGALRM interrupts whatever step is stuck."""
    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"the two-node Ray tests ran past {MODULE_DEADLINE_S} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(MODULE_DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    """A head and a second node of one CPU each, this process connected as the driver."""
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes(timeout=120)
        ray.init(address=cluster.address, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def reachable_server() -> Iterator[FakeServer]:
    address = _interface_address()
    if address is None:
        pytest.fail("this host has no network address besides loopback, so a server the other node reaches "
                    "cannot be shown here", pytrace=False)
    with FakeServer(FakeConfig(ttft_ms=20, itl_ms=2), host=address) as server:
        yield server


def ray_runner(base_url: str, **kw: Any) -> LoadRunner:
    return LoadRunner(base_url, "fake-model", progress=False, cluster="ray", workers=None, request_timeout_s=60, **kw)


def node_ids() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def test_the_actors_land_on_both_nodes(two_nodes: Cluster, reachable_server: FakeServer) -> None:
    assert len(node_ids()) == 2
    with ray_runner(reachable_server.base_url) as runner:
        runner.start()
        backend = runner.backend
        assert isinstance(backend, RayBackend)
        described = backend.describe()
        hello = list(backend._hello)  # noqa: SLF001 - where each actor said it runs
    assert described["placement"] == "STRICT_SPREAD"
    assert {h["node_id"] for h in hello} == node_ids()  # one actor on each node
    assert len({h["pid"] for h in hello}) == 2


def test_a_server_on_loopback_is_a_setup_error_before_any_request(two_nodes: Cluster,
                                                                  llm_fake_server: FakeServer) -> None:
    assert llm_fake_server.host == "127.0.0.1"
    with ray_runner(llm_fake_server.base_url) as runner:
        with pytest.raises(SetupError) as raised:
            runner.start()
        with pytest.raises(SetupError):  # and so does a cell, rather than failing as the server's "-"
            runner.run_cell_kw(8, 16, 3)
    message = str(raised.value)
    assert "127.0.0.1, this host's loopback, but load actors run on other nodes" in message
    assert "\nfix: serve on an address of this host they reach" in message and "--llm-host " in message
    assert llm_fake_server.requests_seen == 0  # not one request was sent


def test_a_reachable_server_gets_one_record_per_request_from_both_nodes(two_nodes: Cluster,
                                                                       reachable_server: FakeServer) -> None:
    before = reachable_server.requests_seen
    with ray_runner(reachable_server.base_url) as runner:
        cell = runner.run_cell_kw(USERS, 16, 5)
    assert cell.ok and cell.valid and cell.cause is None, (cell.error, cell.invalid_reasons)
    assert sorted(r.index for r in cell.records) == list(range(USERS))  # every request, once
    assert all(r.ok and r.output_tokens == 5 for r in cell.records)
    assert reachable_server.requests_seen - before == USERS
    client = cell.extra["client"]
    assert client["backend"] == "ray" and client["placement"] == "STRICT_SPREAD"
    assert len(client["nodes"]) == 2 and sorted(w["requests"] for w in client["workers"]) == [USERS // 2] * 2


CELL_TEST = """
def test_cell(llm_load):
    llm_load(users=16, prompt_tokens=16, max_tokens=3)
"""


def test_a_session_with_a_loopback_server_fails_with_the_fix_and_no_dash(
        two_nodes: Cluster, llm_fake_server: FakeServer, pytester: pytest.Pytester,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23's example as users run it: not `1 passed` with "-" in the matrix."""
    pytester.makepyfile(CELL_TEST)
    # An earlier ray.init() in this process (test_ray_cluster.py) turns on Ray's token authentication
    # (RAY_AUTH_MODE=token) with the token in ~/.ray; pytester's sessions get a HOME of their own.
    token = Path(pwd.getpwuid(os.getuid()).pw_dir) / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_MODE") == "token" and token.exists():
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    started = time.perf_counter()
    result = pytester.runpytest_subprocess(
        f"--llm-base-url={llm_fake_server.base_url}", "--llm-load-cluster=ray",
        f"--llm-ray-address={two_nodes.address}", "-p", "no:cacheprovider", timeout=240)
    assert time.perf_counter() - started < 240
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*SetupError*this host's loopback*", "*fix: serve on an address*"])
    assert llm_fake_server.requests_seen == 0
    report = pytester.path / "llmload-report" / "llmload.json"
    cells = json.loads(report.read_text())["cells"] if report.exists() else []
    assert all(c.get("cause") != "server" for c in cells)  # nothing for the matrix's "-"
