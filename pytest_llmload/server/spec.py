"""What to launch: the `vllm serve` command line and environment for a model and a layout.

`ServerSpec` is the whole description, including which vLLM install runs it (`install.VllmInstall`;
None: the running Python); `build_argv` and `server_env` turn it into what `launch.py` runs. CPU and GPU differ: on the CPU build, eager mode, float32 and a bounded KV cache (without
`--kv-cache-memory-bytes` the CPU worker reserves 0.92 x RAM); on a GPU, vLLM's own defaults.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .install import VllmInstall
from .presets import ModelChoice
from .tiny import default_cache_dir

DEFAULT_KV_CACHE_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class ServerSpec:
    """How to launch vLLM. `extra_args` are passed verbatim after everything else."""

    model: str  # local folder or hub id
    served_model_name: str
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES, e.g. "0,1"
    quantization: str | None = None
    dtype: str | None = None  # None: float32 on CPU, vLLM's choice on GPU
    max_model_len: int | None = None
    extra_args: tuple[str, ...] = ()
    startup_timeout_s: float = 600.0
    host: str = "127.0.0.1"
    port: int | None = None  # None: pick a free port
    device: str = "auto"  # "auto", "cpu" or "gpu"
    kv_cache_bytes: int = DEFAULT_KV_CACHE_BYTES  # CPU only: without it the CPU worker takes 0.92 x RAM
    log_dir: Path | None = None  # None: a new folder under the system temp dir (kept for reading)
    cache_dir: Path | None = None  # holds VLLM_CACHE_ROOT between runs; None: default_cache_dir()
    env: Mapping[str, str] = field(default_factory=dict, hash=False)  # added to the environment last
    install: VllmInstall | None = None  # the environment vLLM runs from; None: the running Python
    cpus: tuple[int, ...] = ()  # the whole process tree's affinity (server/placement.py); () leaves it as is
    nice: int = 0  # added to the process tree's niceness (server/placement.py)


def spec_from_choice(choice: ModelChoice, **overrides: Any) -> ServerSpec:
    """A ServerSpec for a resolved model, with its preset's layout; keyword arguments override."""
    values: dict[str, Any] = {"model": choice.model, "served_model_name": choice.served_model_name}
    preset = choice.preset
    if preset is not None:
        values.update(tensor_parallel=preset.tensor_parallel, pipeline_parallel=preset.pipeline_parallel,
                      quantization=preset.quantization, dtype=preset.dtype,
                      max_model_len=preset.max_model_len)
    values.update(overrides)
    return ServerSpec(**values)


def resolve_device(device: str) -> str:
    """'cpu' or 'gpu'; 'auto' means gpu when an NVIDIA device node exists."""
    if device in ("cpu", "gpu"):
        return device
    if device != "auto":
        raise ConfigError(f"device must be 'auto', 'cpu' or 'gpu', not {device!r}")
    return "gpu" if os.path.exists("/dev/nvidiactl") else "cpu"


def build_argv(spec: ServerSpec, port: int) -> list[str]:
    """The command line that starts vLLM for `spec` on `port`.

    `python -m vllm.entrypoints.cli.main serve` (what the `vllm` script runs) with the install's Python
    (default: sys.executable): that environment's vLLM, whether or not its bin folder is on PATH.
    """
    python = sys.executable if spec.install is None else spec.install.python
    argv = [python, "-m", "vllm.entrypoints.cli.main", "serve", spec.model,
            "--served-model-name", spec.served_model_name, "--host", spec.host, "--port", str(port)]
    if resolve_device(spec.device) == "cpu":
        argv += _cpu_args(spec)
    else:
        argv += _gpu_args(spec)
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.quantization:
        argv += ["--quantization", spec.quantization]
    # Per-request cached prompt tokens in usage: the prefix-cache hit rate of each turn of a conversation.
    argv.append("--enable-prompt-tokens-details")
    return argv + list(spec.extra_args)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _cpu_args(spec: ServerSpec) -> list[str]:
    # Eager mode: the compile cache does not reload in this build, so compiling costs ~30 s a start.
    argv = ["--dtype", spec.dtype or "float32", "--enforce-eager",
            "--kv-cache-memory-bytes", str(spec.kv_cache_bytes)]
    if spec.tensor_parallel != 1:
        argv += ["--tensor-parallel-size", str(spec.tensor_parallel)]
    if spec.pipeline_parallel != 1:
        argv += ["--pipeline-parallel-size", str(spec.pipeline_parallel)]
    return argv


def _gpu_args(spec: ServerSpec) -> list[str]:
    argv = ["--tensor-parallel-size", str(spec.tensor_parallel),
            "--pipeline-parallel-size", str(spec.pipeline_parallel)]
    if spec.dtype:
        argv += ["--dtype", spec.dtype]
    return argv


def server_env(spec: ServerSpec, tmpdir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: `base` (default os.environ) adjusted for a quiet, contained vLLM."""
    env = dict(os.environ if base is None else base)
    # If set, it silently overrides --kv-cache-memory-bytes.
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)
    env["VLLM_NO_USAGE_STATS"] = "1"
    if resolve_device(spec.device) == "cpu" or Path(spec.model).is_dir():
        # Nothing to download; offline mode turns a hub lookup into a fast, clear failure.
        env["HF_HUB_OFFLINE"] = "1"
    # ZMQ sockets and vllm_dist_* files land in TMPDIR; keep them out of /tmp and short (AF_UNIX paths
    # are limited to 107 bytes).
    env["TMPDIR"] = str(tmpdir)
    cache_dir = spec.cache_dir if spec.cache_dir is not None else default_cache_dir()
    env["VLLM_CACHE_ROOT"] = str(cache_dir / "vllm-cache")  # kept between runs: saves ~8 s a start
    if spec.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.gpus
    # vLLM's dev routes include POST /reset_prefix_cache, which a `cold` cell needs; they can also reset
    # or sleep the engine, so only a server nobody else can reach gets them.
    if is_loopback(spec.host):
        env["VLLM_SERVER_DEV_MODE"] = "1"
    else:
        env.pop("VLLM_SERVER_DEV_MODE", None)
    if spec.install is not None and not spec.install.is_running_environment:
        _activate(env, spec.install)
    env.update(spec.env)
    return env


def _activate(env: dict[str, str], install: VllmInstall) -> None:
    """What activating the install's environment does: its bin folder first on PATH (tools vLLM runs by
    name) and VIRTUAL_ENV naming it; the caller's own environment would otherwise be the active one."""
    bin_dir = os.path.dirname(install.python)
    env["PATH"] = os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)
    if Path(install.prefix, "pyvenv.cfg").is_file():
        env["VIRTUAL_ENV"] = install.prefix
    else:
        env.pop("VIRTUAL_ENV", None)


def merge_env(*layers: Mapping[str, str] | None) -> dict[str, str]:
    """Environment layers for `ServerSpec.env`, later ones winning: e.g. the placement's variables, then
    the user's `--llm-server-env` (a variable the user sets on purpose overrides the plan's)."""
    out: dict[str, str] = {}
    for layer in layers:
        out.update(layer or {})
    return out
