"""The server layer: pure argv/env, the CPU install check, and a real vLLM on the tiny model.

The end-to-end tests start real vLLM processes (20-60 s each on 2 cores), so they share one server
where they can. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
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

from pytest_llmload import cpu_setup
from pytest_llmload.errors import ConfigError, ServerDiedError, ServerStartError
from pytest_llmload.models import PRESETS, ModelChoice, build_tiny_model
from pytest_llmload.server import (
    AttachedServer,
    ServerSpec,
    VLLMServer,
    build_argv,
    normalize_base_url,
    pick_free_port,
    port_is_free,
    read_tail,
    resolve_device,
    server_env,
    spec_from_choice,
)

needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
START_TIMEOUT_S = 240.0  # generous for a loaded 2-core machine; a healthy start takes 20-60 s


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# ----- pure pieces


def test_argv_cpu() -> None:
    spec = ServerSpec(model="/m", served_model_name="tiny", device="cpu", max_model_len=2048,
                      extra_args=("--seed", "3"))
    argv = build_argv(spec, 8123)
    assert argv[:5] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", "/m"]
    assert _value(argv, "--served-model-name") == "tiny" and _value(argv, "--port") == "8123"
    assert _value(argv, "--host") == "127.0.0.1" and _value(argv, "--max-model-len") == "2048"
    assert _value(argv, "--dtype") == "float32" and "--enforce-eager" in argv
    assert _value(argv, "--kv-cache-memory-bytes") == str(256 * 1024**2)
    assert "--tensor-parallel-size" not in argv and "--quantization" not in argv
    assert argv[-2:] == ["--seed", "3"]  # verbatim and last, so they can override


def test_argv_cpu_keeps_a_given_dtype() -> None:
    argv = build_argv(ServerSpec(model="/m", served_model_name="m", device="cpu", dtype="bfloat16"), 1)
    assert _value(argv, "--dtype") == "bfloat16"


def test_argv_gpu_from_preset() -> None:
    preset = PRESETS["codestral-22b-gptq8"]
    choice = ModelChoice(model=preset.model, served_model_name="codestral", preset=preset)
    spec = spec_from_choice(choice, device="gpu", gpus="0,1")
    argv = build_argv(spec, 9000)
    assert _value(argv, "--tensor-parallel-size") == "2" and _value(argv, "--pipeline-parallel-size") == "1"
    assert _value(argv, "--quantization") == "gptq" and _value(argv, "--dtype") == "float16"
    assert _value(argv, "--max-model-len") == "4096"
    assert "--enforce-eager" not in argv and "--kv-cache-memory-bytes" not in argv


def test_server_env(tmp_path: Path) -> None:
    spec = ServerSpec(model=str(tmp_path), served_model_name="m", device="cpu", gpus="1",
                      cache_dir=tmp_path / "cache", env={"EXTRA": "x", "VLLM_NO_USAGE_STATS": "0"})
    base = {"VLLM_CPU_KVCACHE_SPACE": "40", "PATH": "/bin"}
    env = server_env(spec, tmp_path / "tmp", base)
    assert "VLLM_CPU_KVCACHE_SPACE" not in env  # it would silently override --kv-cache-memory-bytes
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"] == "/bin"
    assert env["TMPDIR"] == str(tmp_path / "tmp")
    assert env["VLLM_CACHE_ROOT"] == str(tmp_path / "cache" / "vllm-cache")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["EXTRA"] == "x"
    assert env["VLLM_NO_USAGE_STATS"] == "0"  # the user's env wins
    assert base == {"VLLM_CPU_KVCACHE_SPACE": "40", "PATH": "/bin"}  # not modified


def test_gpu_hub_model_may_download(tmp_path: Path) -> None:
    spec = ServerSpec(model="org/name", served_model_name="m", device="gpu", cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE" not in server_env(spec, tmp_path, {})


def test_spec_is_hashable_despite_its_env_mapping() -> None:
    assert hash(ServerSpec(model="m", served_model_name="m", env={"A": "1"}))


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu" and resolve_device("gpu") == "gpu"
    assert resolve_device("auto") in ("cpu", "gpu")
    with pytest.raises(ConfigError, match="'tpu'"):
        resolve_device("tpu")


def test_ports() -> None:
    port = pick_free_port()
    assert port_is_free("127.0.0.1", port)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        assert not port_is_free("127.0.0.1", held.getsockname()[1])


def test_read_tail(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert read_tail(log, 3) == "line 97\nline 98\nline 99"
    assert read_tail(tmp_path / "missing.log") == "" and read_tail(None) == ""


@pytest.mark.parametrize(("url", "expected"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ("http://127.0.0.1:8000/v1/", "http://127.0.0.1:8000"),
    ("https://host/prefix/v1", "https://host/prefix"),
])
def test_normalize_base_url(url: str, expected: str) -> None:
    assert normalize_base_url(url) == expected


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://h/", "http://", "http://h:99999"])
def test_bad_url_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        AttachedServer(url)


def test_attach_to_nothing_fails_fast() -> None:
    port = pick_free_port()
    started = time.monotonic()
    with pytest.raises(ServerStartError, match=f"127.0.0.1:{port}/v1/models.*is it running"):
        AttachedServer(f"http://127.0.0.1:{port}", timeout_s=2)
    assert time.monotonic() - started < 5


def test_explicit_port_taken_fails_before_launch(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = VLLMServer(ServerSpec(model=str(tmp_path), served_model_name="m", device="gpu", port=port))
        with pytest.raises(ServerStartError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
    assert server.pid is None  # nothing was launched


def test_broken_cpu_install_is_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A broken install cannot be made for real inside the test environment; substitute the check.
    monkeypatch.setattr(cpu_setup, "check_install", lambda: ["vllm is not importable: pip install x"])
    server = VLLMServer(ServerSpec(model=str(tmp_path), served_model_name="m", device="cpu"))
    with pytest.raises(ServerStartError, match="vllm is not importable: pip install x"):
        server.start()
    assert server.pid is None


# ----- cpu_setup


def test_vllm_metadata_stand_in(tmp_path: Path) -> None:
    dist_info = cpu_setup.write_vllm_metadata(tmp_path, "0.32.0")
    assert dist_info.name == "vllm-0.32.0+cpu.dist-info"
    dist = md.PathDistribution(dist_info)
    assert dist.metadata["Name"] == "vllm" and dist.version == "0.32.0+cpu"
    assert cpu_setup.cpu_version("1.0+cpu") == "1.0+cpu"
    assert "vllm-0.32.0+cpu.dist-info/RECORD,," in (dist_info / "RECORD").read_text()


@needs_vllm
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


@needs_vllm
def test_start_retried_after_the_port_was_taken(server: VLLMServer, taken_port: int) -> None:
    assert server.port != taken_port
    assert server.log_path is not None and server.log_path.name.endswith("-2.log")
    first_log = server.log_path.with_name(server.log_path.name.replace("-2.log", "-1.log").replace(
        f"-{server.port}-", f"-{taken_port}-"))
    assert "already in use" in first_log.read_text().lower()


@needs_vllm
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


@needs_vllm
def test_running_server_attributes(server: VLLMServer, tiny_spec: ServerSpec) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}" and server.model == "tiny"
    assert server.api_key is None and server.returncode() is None
    server.raise_if_dead()
    assert server.version().startswith("0.")
    assert server.argv[:4] == [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve"]
    assert server.log_path is not None and server.log_path.parent == tiny_spec.log_dir
    assert server.log_tail(5).count("\n") <= 4 and "--served-model-name tiny" in server.log_path.read_text()
    assert server.pid in server.tree_pids()


@needs_vllm
def test_attach_to_running_server(server: VLLMServer) -> None:
    attached = AttachedServer(server.base_url + "/v1/")
    assert attached.base_url == server.base_url and attached.model == "tiny"
    assert attached.returncode() is None and attached.log_tail() == "" and attached.log_path is None
    assert attached.version() == server.version()
    with pytest.raises(ConfigError, match="'other' is not served.*tiny"):
        AttachedServer(server.base_url, model="other")
    assert server.returncode() is None  # attaching never touches the process


@needs_vllm
def test_bad_flag_fails_fast_with_the_log_tail(tiny_spec: ServerSpec) -> None:
    spec = replace(tiny_spec, extra_args=("--no-such-flag",))
    started = time.monotonic()
    with pytest.raises(ServerStartError, match="exited with code") as info:
        VLLMServer(spec).start()
    assert "--no-such-flag" in info.value.log_tail and info.value.returncode not in (None, 0)
    assert time.monotonic() - started < 90


@needs_vllm
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


@needs_vllm
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
from pytest_llmload.server import ServerSpec, VLLMServer
tmp = Path(sys.argv[1])
VLLMServer(ServerSpec(model=str(tmp), served_model_name="m", device="cpu", log_dir=tmp,
                      cache_dir=tmp, env={"TMPDIR": str(tmp)})).start()
"""


@needs_vllm
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


@needs_vllm
def test_killed_server_is_noticed_and_its_orphans_reaped(tiny_spec: ServerSpec) -> None:
    with VLLMServer(tiny_spec) as server:
        pids = server.tree_pids()
        assert server.pid is not None and len(pids) >= 3
        os.kill(server.pid, signal.SIGKILL)  # the API server alone: its children are orphaned
        deadline = time.monotonic() + 10
        while server.returncode() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.returncode() == -signal.SIGKILL
        with pytest.raises(ServerDiedError, match="exited with code -9") as info:
            server.raise_if_dead()
        assert info.value.returncode == -9 and info.value.log_tail
        assert len(_alive(pids)) >= 2  # the engine core and worker live on until stop()
        shm = server.shm_files()
        assert shm  # vLLM's engine maps shared-memory segments; killing their tracker would leak them
    assert _alive(pids) == []
    assert [path for path in shm if os.path.exists(path)] == []  # no /dev/shm leak
    server.stop()  # a second stop is harmless
