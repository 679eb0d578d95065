"""The vLLM server we start, as a context manager:

    with VLLMServer(ServerSpec(model=path, served_model_name="tiny")) as server:
        ... requests to server.base_url ...

Start: pick a free 127.0.0.1 port, launch `python -m vllm.entrypoints.cli.main serve` in a new
session with its output in a log file (a pipe nobody reads would fill and hang the server), then poll
`/health` and `/v1/models` against a monotonic deadline, checking every loop that the process lives.
Failures raise ServerStartError with the log tail. Stop: the whole process tree (`process.ProcessTree`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from ..control import Control
from ..errors import ConfigError, ServerStartError
from .install import VllmInstall, resolve_install
from .process import LIVE_SERVERS, ProcessTree, child_setup, pick_free_port, port_is_free, read_tail
from .spec import ServerSpec, build_argv, resolve_device, server_env

POLL_S = 0.5
PORT_ATTEMPTS = 3
_PORT_IN_USE = re.compile(r"address already in use|errno 98\b", re.IGNORECASE)


class _PortTaken(Exception):
    """vLLM could not bind its port (another process took it after we picked it)."""


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
        self.startup_s: float | None = None  # launch to ready (/health and /v1/models), monotonic
        self.health_s: float | None = None  # launch to the first healthy /health (a phase of startup_s)
        self._started: float | None = None
        self._tree: ProcessTree | None = None
        self._tmpdir: Path | None = None
        self._log_dir: Path | None = None
        self._control: Control | None = None
        self._stopping = False
        # The install the server runs from; the running Python's is read at start when the spec names none.
        self.install: VllmInstall | None = spec.install

    # ----- attributes

    @property
    def base_url(self) -> str:
        """http://HOST:PORT, without /v1 (a wildcard listen address is reached through 127.0.0.1)."""
        host = "127.0.0.1" if self.spec.host in ("0.0.0.0", "") else self.spec.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The API server's pid (None before start)."""
        return None if self._tree is None else self._tree.proc.pid

    def tree_pids(self) -> list[int]:
        """The API server and every descendant recorded so far."""
        return [] if self._tree is None else self._tree.pids()

    def shm_files(self) -> list[str]:
        """The /dev/shm files the server tree had mapped when last recorded (stop removes leftovers)."""
        return [] if self._tree is None else self._tree.shm_files()

    def returncode(self) -> int | None:
        """The API server's exit code; None while it runs (or before start)."""
        return None if self._tree is None else self._tree.proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        return read_tail(self.log_path, lines)

    def version(self) -> str | None:
        """vLLM's version as the server reports it (GET /version); None if it does not answer."""
        return None if self._control is None else self._control.version()

    # ----- start

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> VLLMServer:
        """Launch vLLM and wait until it serves the model; ServerStartError if it cannot."""
        if self._tree is not None:
            raise RuntimeError("a VLLMServer starts once; make a new one")
        self._check_before_launch()
        started = self._started = time.monotonic()
        try:
            self._start_with_port_retries(started + self.spec.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _check_before_launch(self) -> None:
        if self.install is None:
            try:
                self.install = resolve_install(None)
            except ConfigError as exc:
                raise ServerStartError(str(exc)) from None
        device = resolve_device(self.spec.device)
        problems = self.install.readiness_problems(device)
        if problems:
            raise ServerStartError(f"vLLM cannot serve on {device.upper()} from {self.install.describe()}:\n  "
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
            launched_at = time.time()
            # The child keeps its own copy of the descriptor; ours can close right away.
            proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True, preexec_fn=child_setup(self.spec.cpus, self.spec.nice))
        self._tree = ProcessTree(proc, launched_at)
        if self._control is not None:
            self._control.close()
        self._control = Control(self.base_url, timeout_s=POLL_S * 4)
        self._stopping = False
        LIVE_SERVERS.add(self)

    def _wait_ready(self, deadline: float) -> None:
        assert self._tree is not None
        while True:
            rc = self._tree.proc.poll()
            if rc is not None:
                self._raise_exited(rc)
            self._tree.record()
            if self._is_ready():
                self._tree.record(with_shm=True)
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
        assert self._control is not None
        if not self._control.healthy():
            return False  # not listening yet, or busy loading
        if self.health_s is None and self._started is not None:
            self.health_s = time.monotonic() - self._started
        try:
            return self.model in self._control.models()
        except httpx.HTTPError:
            return False

    # ----- stop

    def stop(self) -> None:
        """Stop the server and every process it started; safe to call again, from atexit too."""
        if self._stopping:
            return
        self._stopping = True  # first, so a re-entrant call (signal handler) returns at once
        try:
            self._stop_tree()
        finally:
            LIVE_SERVERS.discard(self)
            if self._control is not None:
                self._control.close()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def _stop_tree(self) -> None:
        if self._tree is not None:
            self._tree.stop()
