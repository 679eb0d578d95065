"""A real vLLM on the tiny model: start (through a port race), serve, attach, fail to start with the log
tail, stop the whole tree, die with a killed parent. Each start takes 20-60 s on 2 cores, so the tests
share one server where they can. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from pytest_llmload.errors import ConfigError, ServerStartError
from pytest_llmload.server import cpu_setup
from pytest_llmload.server.attach import AttachedServer
from pytest_llmload.server.launch import VLLMServer
from pytest_llmload.server.process import pick_free_port
from pytest_llmload.server.spec import ServerSpec
from pytest_llmload.server.tiny import build_tiny_model

START_TIMEOUT_S = 240.0  # generous for a loaded 2-core machine; a healthy start takes 20-60 s


def test_this_environment_is_ready_for_cpu_serving(capsys: pytest.CaptureFixture[str]) -> None:
    assert cpu_setup.check_install() == []
    assert cpu_setup.main(["--check"]) == 0
    assert "ok: vllm" in capsys.readouterr().out


# ----- a real vLLM on the tiny model


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by every server of this module, so VLLM_CACHE_ROOT is warm after the first start;
    # $LLMLOAD_CACHE_DIR keeps it warm across runs too (about 8 s a start).
    env = os.environ.get("LLMLOAD_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("llmload-cache")


@pytest.fixture(scope="module")
def tiny_spec(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ServerSpec:
    return ServerSpec(model=str(build_tiny_model(cache_dir)), served_model_name="tiny", device="cpu",
                      max_model_len=2048, startup_timeout_s=START_TIMEOUT_S, cache_dir=cache_dir,
                      log_dir=tmp_path_factory.mktemp("logs"))


def _alive(pids: list[int]) -> list[int]:
    psutil = pytest.importorskip("psutil")
    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def taken_port() -> Iterator[int]:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_spec: ServerSpec, taken_port: int) -> Iterator[VLLMServer]:
    """One shared server. It is started through the port race: the first port offered is taken."""
    offered = iter([taken_port])
    with VLLMServer(tiny_spec, port_picker=lambda host: next(offered, None) or pick_free_port(host)) as srv:
        yield srv
        pids = srv.tree_pids()
    assert len(pids) >= 3  # API server, engine core, worker (and a resource tracker)
    assert _alive(pids) == [], "processes of the server tree outlived stop()"
    assert srv.returncode() is not None


def test_start_retried_after_the_port_was_taken(server: VLLMServer, taken_port: int) -> None:
    assert server.port != taken_port
    assert server.log_path is not None and server.log_path.name.endswith("-2.log")
    first_log = server.log_path.with_name(server.log_path.name.replace("-2.log", "-1.log").replace(
        f"-{server.port}-", f"-{taken_port}-"))
    assert "already in use" in first_log.read_text().lower()


def test_streamed_completion_with_usage(server: VLLMServer) -> None:
    body = {"model": server.model, "prompt": "The first request", "max_tokens": 5, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(trust_env=False, timeout=60) as client:
        with client.stream("POST", f"{server.base_url}/v1/completions", json=body) as response:
            assert response.status_code == 200
            events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["text"] for c in chunks[:-1]).strip()


def test_running_server_attributes(server: VLLMServer, tiny_spec: ServerSpec) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}" and server.model == "tiny"
    assert server.api_key is None and server.returncode() is None
    assert server.returncode() is None and server.startup_s is not None and server.startup_s > 0
    assert (server.version() or "").startswith("0.")
    assert server.argv[:4] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    assert server.log_path is not None and server.log_path.parent == tiny_spec.log_dir
    assert server.log_tail(5).count("\n") <= 4 and "--served-model-name tiny" in server.log_path.read_text()
    assert server.pid in server.tree_pids()


def test_attach_to_running_server(server: VLLMServer) -> None:
    with AttachedServer(server.base_url + "/v1/") as attached:
        assert attached.base_url == server.base_url and attached.model == "tiny"
        assert attached.returncode() is None and attached.log_tail() == "" and attached.log_path is None
        assert attached.version() == server.version()
    with pytest.raises(ConfigError, match="'other' is not served.*tiny"):
        AttachedServer(server.base_url, model="other")
    assert server.returncode() is None  # attaching never touches the process


def test_bad_flag_fails_fast_with_the_log_tail(tiny_spec: ServerSpec) -> None:
    spec = replace(tiny_spec, extra_args=("--no-such-flag",))
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="exited with code") as info:
        VLLMServer(spec).start()
    assert "--no-such-flag" in info.value.log_tail and info.value.returncode not in (None, 0)
    assert time.monotonic() - started < 90


def test_bad_model_fails_with_the_log_tail(tiny_spec: ServerSpec, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    spec = replace(tiny_spec, model=str(tmp_path))
    server = VLLMServer(spec)
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="exited with code") as info:
        server.start()
    assert time.monotonic() - started < START_TIMEOUT_S
    assert info.value.log_tail and "no-such-architecture" in info.value.log_tail
    assert _alive(server.tree_pids()) == []


def test_not_ready_before_the_deadline(tiny_spec: ServerSpec) -> None:
    server = VLLMServer(replace(tiny_spec, startup_timeout_s=4))
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready within 4 s"):
        server.start()
    assert time.monotonic() - started < 4 + 20  # the deadline plus a SIGTERM grace at most
    assert server.returncode() is not None and _alive(server.tree_pids()) == []


_ORPHAN_SCRIPT = """
import sys
from pathlib import Path
from pytest_llmload.server.launch import VLLMServer
from pytest_llmload.server.spec import ServerSpec
tmp = Path(sys.argv[1])
VLLMServer(ServerSpec(model=str(tmp), served_model_name="m", device="cpu", log_dir=tmp,
                      cache_dir=tmp, env={"TMPDIR": str(tmp)})).start()
"""


def test_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path)])
    try:
        deadline = time.monotonic() + 30
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.1)
        [api_server] = psutil.Process(parent.pid).children()
    finally:
        parent.kill()  # no atexit, no finally: only the kernel's parent-death signal is left
        parent.wait()
    api_server.wait(timeout=15)  # psutil.TimeoutExpired (a test error) if it outlives its parent


def test_killed_server_is_noticed_and_its_orphans_reaped(tiny_spec: ServerSpec) -> None:
    with VLLMServer(tiny_spec) as server:
        pids = server.tree_pids()
        assert server.pid is not None and len(pids) >= 3
        os.kill(server.pid, signal.SIGKILL)  # the API server alone: its children are orphaned
        deadline = time.monotonic() + 10
        while server.returncode() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.returncode() == -signal.SIGKILL
        assert server.log_tail()
        assert len(_alive(pids)) >= 2  # the engine core and worker live on until stop()
        shm = server.shm_files()
        assert shm  # vLLM's engine maps shared-memory segments; killing their tracker would leak them
    assert _alive(pids) == []
    assert [path for path in shm if os.path.exists(path)] == []  # no /dev/shm leak
    server.stop()  # a second stop is harmless
