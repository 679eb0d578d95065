"""The vLLM server as a context manager, and an attached (already running) server.

    with VLLMServer(ServerSpec(model=path, served_model_name="tiny")) as server:
        ... requests to server.base_url ...

Start: pick a free 127.0.0.1 port, launch `python -m vllm.entrypoints.cli.main serve` in a new
session with its output in a log file (a pipe nobody reads would fill and hang the server), then poll
`/health` and `/v1/models` against a monotonic deadline, checking every loop that the process lives.
Failures raise ServerStartError with the log tail.

Stop (measured on vLLM 0.32): SIGKILL of the API server alone orphans the engine core and worker,
and killing the resource tracker leaks /dev/shm segments. So the descendants are recorded while the
server runs; stop sends SIGTERM, waits, SIGKILLs the API server, then SIGKILLs every recorded
descendant still alive and removes the /dev/shm files they had mapped. An atexit guard stops any
server a crashed caller left behind.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_llmload import cpu_setup
from pytest_llmload.errors import ConfigError, ServerDiedError, ServerStartError
from pytest_llmload.models import ModelChoice, default_cache_dir

DEFAULT_KV_CACHE_BYTES = 256 * 1024**2
TERM_GRACE_S = 10.0  # SIGTERM can hang while streams are open ("Waiting for connections to close")
POLL_S = 0.5
PORT_ATTEMPTS = 3
_PORT_IN_USE = re.compile(r"address already in use|errno 98\b", re.IGNORECASE)
# Direct HTTP to the server we started; an environment proxy must never see 127.0.0.1 traffic.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


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

    `python -m vllm.entrypoints.cli.main serve` (what the `vllm` script runs) with sys.executable:
    it uses the same environment as the caller whether or not its bin folder is on PATH.
    """
    argv = [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", spec.model,
            "--served-model-name", spec.served_model_name, "--host", spec.host, "--port", str(port)]
    if resolve_device(spec.device) == "cpu":
        argv += _cpu_args(spec)
    else:
        argv += _gpu_args(spec)
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.quantization:
        argv += ["--quantization", spec.quantization]
    return argv + list(spec.extra_args)


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
    env.update(spec.env)
    return env


def pick_free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (another process may take it before vLLM binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """True when `port` can be bound on `host` (with SO_REUSEADDR, as vLLM binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def http_get(url: str, timeout_s: float = 2.0, api_key: str | None = None) -> tuple[int, bytes]:
    """GET `url` without any proxy; returns (status, body). Network errors propagate as OSError."""
    request = urllib.request.Request(url)
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def read_tail(path: Path | None, lines: int = 40) -> str:
    """The last `lines` lines of a text file (at most the last 64 KiB are read)."""
    if path is None:
        return ""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            data = f.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


class _PortTaken(Exception):
    """vLLM could not bind its port (another process took it after we picked it)."""


_LIVE: weakref.WeakSet[VLLMServer] = weakref.WeakSet()


def stop_all_servers() -> None:
    """Stop every VLLMServer of this process still running (atexit, or a signal handler's call)."""
    for server in list(_LIVE):
        server.stop()


atexit.register(stop_all_servers)


class VLLMServer:
    """A vLLM server process and its children, from start to a complete tree shutdown."""

    api_key: str | None = None

    def __init__(self, spec: ServerSpec, *, port_picker: Callable[[str], int] = pick_free_port) -> None:
        self.spec = spec
        self.model = spec.served_model_name
        self._port_picker = port_picker  # tests substitute one that returns a taken port first
        self.port: int | None = None
        self.argv: list[str] = []
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tree: dict[int, Any] = {}  # pid -> psutil.Process, recorded while the server runs
        self._shm: set[str] = set()  # /dev/shm files the tree had mapped
        self._tmpdir: Path | None = None
        self._log_dir: Path | None = None
        self._launched_at = 0.0  # time.time() of the launch, to tell our group's processes from reused pids
        self._stopping = False

    # ----- attributes

    @property
    def base_url(self) -> str:
        """http://HOST:PORT, without /v1 (a wildcard listen address is reached through 127.0.0.1)."""
        host = "127.0.0.1" if self.spec.host in ("0.0.0.0", "") else self.spec.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The API server's pid (None before start)."""
        return None if self._proc is None else self._proc.pid

    def tree_pids(self) -> list[int]:
        """The API server and every descendant recorded so far."""
        self._record_tree()
        pids = set(self._tree)
        if self._proc is not None:
            pids.add(self._proc.pid)
        return sorted(pids)

    def shm_files(self) -> list[str]:
        """The /dev/shm files the server tree had mapped when last recorded (stop removes leftovers)."""
        return sorted(self._shm)

    def returncode(self) -> int | None:
        """The API server's exit code; None while it runs (or before start)."""
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        return read_tail(self.log_path, lines)

    def raise_if_dead(self) -> None:
        """Raise ServerDiedError (exit code and log tail) if the server exited without stop()."""
        rc = self.returncode()
        if rc is not None and not self._stopping:
            raise ServerDiedError(f"vLLM server (pid {self.pid}) exited with code {rc}",
                                  log_tail=self.log_tail(), returncode=rc)

    def version(self) -> str:
        """vLLM's version as the server reports it (GET /version)."""
        status, body = http_get(f"{self.base_url}/version")
        if status != 200:
            raise ServerDiedError(f"GET /version answered HTTP {status}", log_tail=self.log_tail())
        return str(json.loads(body)["version"])

    # ----- start

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> VLLMServer:
        """Launch vLLM and wait until it serves the model; ServerStartError if it cannot."""
        if self._proc is not None:
            raise RuntimeError("a VLLMServer starts once; make a new one")
        self._check_before_launch()
        deadline = time.monotonic() + self.spec.startup_timeout_s
        try:
            self._start_with_port_retries(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_before_launch(self) -> None:
        if resolve_device(self.spec.device) == "cpu":
            problems = cpu_setup.check_install()
            if problems:
                raise ServerStartError("vLLM cannot serve on CPU in this environment:\n  "
                                       + "\n  ".join(problems))
        if self.spec.port is not None and not port_is_free(self.spec.host, self.spec.port):
            raise ServerStartError(f"port {self.spec.port} on {self.spec.host} is already in use; "
                                   "choose another or leave the port unset to pick a free one")

    def _start_with_port_retries(self, deadline: float) -> None:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            port = self.spec.port if self.spec.port is not None else self._port_picker(self.spec.host)
            self._launch(port, attempt)
            try:
                self._wait_ready(deadline)
                return
            except _PortTaken:
                tail = self.log_tail()
                self._stop_tree()
                if self.spec.port is not None or attempt == PORT_ATTEMPTS:
                    raise ServerStartError(f"vLLM could not bind {self.spec.host}:{port} (address "
                                           f"already in use), attempt {attempt}", log_tail=tail) from None

    def _launch(self, port: int, attempt: int) -> None:
        self.port = port
        self.argv = build_argv(self.spec, port)
        if self._log_dir is None:
            self._log_dir = self.spec.log_dir or Path(tempfile.mkdtemp(prefix="llmload-logs-"))
            self._log_dir.mkdir(parents=True, exist_ok=True)
        name = self.spec.served_model_name.replace("/", "_")
        self.log_path = self._log_dir / f"vllm-{name}-{port}-{attempt}.log"
        if self._tmpdir is None:
            # Per server, removed at stop; under the caller's TMPDIR from spec.env when one is given.
            self._tmpdir = Path(tempfile.mkdtemp(prefix="llmload-", dir=self.spec.env.get("TMPDIR")))
        env = server_env(self.spec, self._tmpdir)
        with self.log_path.open("ab") as log:
            log.write(f"# {' '.join(self.argv)}\n".encode())
            log.flush()
            self._launched_at = time.time()
            # The child keeps its own copy of the descriptor; ours can close right away.
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                          preexec_fn=_parent_death_signal())
        self._tree = {}
        self._stopping = False
        _LIVE.add(self)

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        while True:
            rc = self._proc.poll()
            if rc is not None:
                self._raise_exited(rc)
            self._record_tree()
            if self._is_ready():
                self._record_tree(with_shm=True)
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerStartError(
                    f"vLLM was not ready within {self.spec.startup_timeout_s:g} s "
                    f"({self.base_url}/health and /v1/models); command: {' '.join(self.argv)}",
                    log_tail=self.log_tail())
            time.sleep(min(POLL_S, remaining))

    def _raise_exited(self, rc: int) -> None:
        tail = self.log_tail()
        if _PORT_IN_USE.search(tail):
            raise _PortTaken()
        raise ServerStartError(f"vLLM exited with code {rc} during start-up; command: {' '.join(self.argv)}",
                               log_tail=tail, returncode=rc)

    def _is_ready(self) -> bool:
        try:
            status, _ = http_get(f"{self.base_url}/health", timeout_s=POLL_S * 4)
            if status != 200:
                return False
            status, body = http_get(f"{self.base_url}/v1/models", timeout_s=POLL_S * 4)
        except OSError:
            return False  # not listening yet, or busy loading
        return status == 200 and self.model in _model_ids(body)

    # ----- stop

    def stop(self) -> None:
        """Stop the server and every process it started; safe to call again, from atexit too."""
        if self._stopping:
            return
        self._stopping = True  # first, so a re-entrant call (signal handler) returns at once
        try:
            self._stop_tree()
        finally:
            _LIVE.discard(self)
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def _stop_tree(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            self._record_tree(with_shm=True)
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(5)
        self._kill_recorded()
        self._kill_group_stragglers(proc.pid)
        self._remove_shm()

    def _record_tree(self, with_shm: bool = False) -> None:
        """Remember the API server's descendants (and their /dev/shm maps) so stop can reach orphans."""
        if self._proc is None or self._proc.poll() is not None:
            return
        psutil = _psutil()
        try:
            children = psutil.Process(self._proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            self._tree.setdefault(child.pid, child)
        if with_shm:
            for process in self._tree.values():
                self._shm.update(_shm_maps(process))

    def _kill_recorded(self) -> None:
        psutil = _psutil()
        alive = [p for p in self._tree.values() if p.is_running()]  # is_running guards pid reuse
        for process in alive:
            try:
                process.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)

    def _kill_group_stragglers(self, pgid: int) -> None:
        """SIGKILL processes left in the server's process group that were never recorded.

        Only processes created after our launch count, so a reused pgid cannot hit a stranger.
        """
        psutil = _psutil()
        stragglers = []
        for process in psutil.process_iter(["create_time"]):
            try:
                if os.getpgid(process.pid) == pgid and process.info["create_time"] >= self._launched_at - 1:
                    process.kill()
                    stragglers.append(process)
            except (OSError, psutil.Error):
                continue
        psutil.wait_procs(stragglers, timeout=5)

    def _remove_shm(self) -> None:
        for path in sorted(self._shm):
            try:
                os.unlink(path)
            except OSError:
                pass  # already released by its owner, which is the normal case
        self._shm.clear()


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGTERM the server when its parent dies (e.g. pytest SIGKILLed).

    Linux ties this to the *thread* that forked, so it is only used from the main thread, which
    lives as long as the process; elsewhere (and off Linux) the atexit guard is all there is.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec


def _psutil() -> Any:
    import psutil  # ships with vLLM; imported late so the module loads without it

    return psutil


def _shm_maps(process: Any) -> set[str]:
    psutil = _psutil()
    try:
        return {m.path for m in process.memory_maps() if m.path.startswith("/dev/shm/")}
    except psutil.Error:
        return set()


def _model_ids(body: bytes) -> list[str]:
    try:
        return [str(m["id"]) for m in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError):
        return []


class AttachedServer:
    """An OpenAI-compatible server someone else runs: same attributes, never started or stopped here."""

    log_path: Path | None = None
    pid: int | None = None

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 10.0) -> None:
        self.argv: list[str] = []  # we did not launch it
        self.base_url = normalize_base_url(base_url)
        self.port = urllib.parse.urlsplit(self.base_url).port
        self.api_key = api_key
        ids = self._list_models(timeout_s)
        if model is not None and ids and model not in ids:
            raise ConfigError(f"model {model!r} is not served at {self.base_url}; it serves: {', '.join(ids)}")
        if model is None and not ids:
            raise ConfigError(f"{self.base_url}/v1/models lists no model; pass the model name")
        self.model: str = model if model is not None else ids[0]

    def _list_models(self, timeout_s: float) -> list[str]:
        url = f"{self.base_url}/v1/models"
        try:
            status, body = http_get(url, timeout_s=timeout_s, api_key=self.api_key)
        except OSError as exc:
            raise ServerStartError(f"no server answered at {url} ({exc}); is it running?") from exc
        if status != 200:
            raise ServerStartError(f"{url} answered HTTP {status}: {body[:200]!r}")
        return _model_ids(body)

    def returncode(self) -> int | None:
        """Always None: we do not own the process."""
        return None

    def log_tail(self, lines: int = 40) -> str:
        """Always empty: we have no log."""
        return ""

    def raise_if_dead(self) -> None:
        """Nothing to check: we do not own the process."""

    def version(self) -> str | None:
        """The server's /version if it has one (vLLM does), else None."""
        try:
            status, body = http_get(f"{self.base_url}/version", api_key=self.api_key)
            return str(json.loads(body)["version"]) if status == 200 else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def stop(self) -> None:
        """Nothing to stop."""

    def __enter__(self) -> AttachedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def normalize_base_url(url: str) -> str:
    """`url` as http(s)://host[:port][/prefix] without a trailing /v1; ConfigError if it is not one."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"server URL {url!r} must look like http://HOST:PORT")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"server URL {url!r}: {exc}") from exc
    path = parts.path.rstrip("/")
    path = path[: -len("/v1")] if path.endswith("/v1") else path
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))
