"""The server layer without a server: argv and environment, ports, URLs, the CPU install check."""

from __future__ import annotations

import importlib.metadata as md
import socket
import sys
import time
from pathlib import Path

import pytest

from pytest_llmload.control import normalize_base_url
from pytest_llmload.errors import ConfigError, ServerStartError
from pytest_llmload.server import cpu_setup
from pytest_llmload.server.attach import AttachedServer
from pytest_llmload.server.install import VllmInstall
from pytest_llmload.server.launch import VLLMServer
from pytest_llmload.server.presets import PRESETS, ModelChoice
from pytest_llmload.server.process import pick_free_port, port_is_free, read_tail
from pytest_llmload.server.spec import ServerSpec, build_argv, resolve_device, server_env, spec_from_choice

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
        ready = VllmInstall(python=sys.executable, prefix=sys.prefix, vllm_version="1.0", torch_version="2.0")
        server = VLLMServer(ServerSpec(model=str(tmp_path), served_model_name="m", device="gpu", port=port,
                                       install=ready))
        with pytest.raises(ServerStartError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
    assert server.pid is None  # nothing was launched


def test_broken_cpu_install_is_reported_with_the_fix(tmp_path: Path) -> None:
    # What the install's own Python reported (tests/unit/test_install.py reads real ones).
    broken = VllmInstall(python="/env/bin/python", prefix="/env", vllm_version=None, torch_version=None,
                         vllm_importable=False)
    server = VLLMServer(ServerSpec(model=str(tmp_path), served_model_name="m", device="cpu", install=broken))
    with pytest.raises(ServerStartError, match=r"from vLLM \(none\), torch \(none\) in /env \(/env/bin/python\)"
                                               r":\n  vllm is not importable: /env/bin/python -m pip install"):
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
