"""The server's processes: ports, the log, the process tree and its clean shutdown, and the guards that
stop a server whose caller died.

Measured on vLLM 0.32: SIGKILL of the API server alone orphans the engine core and worker, and
killing the resource tracker leaks /dev/shm segments. So the tree is recorded while the server runs
(`ProcessTree`), and stopping kills what was recorded and removes the /dev/shm files it mapped.
Two guards stop servers whose caller did not: the kernel's parent-death signal (pytest SIGKILLed)
and an atexit hook (an exception that skipped `stop()`).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol


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


class Stoppable(Protocol):
    def stop(self) -> None: ...


LIVE_SERVERS: weakref.WeakSet[Stoppable] = weakref.WeakSet()


def stop_all_servers() -> None:
    """Stop every VLLMServer of this process still running (atexit, or a signal handler's call)."""
    for server in list(LIVE_SERVERS):
        server.stop()


atexit.register(stop_all_servers)


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass


def child_setup(cpus: Iterable[int] = (), nice: int = 0) -> Callable[[], None] | None:
    """A preexec_fn for the server: pin it to `cpus` and lower its priority by `nice` (every child
    inherits both) and, on Linux from the main thread, ask the kernel to SIGTERM it when its parent dies
    (e.g. pytest SIGKILLed).

    Linux ties the parent-death signal to the *thread* that forked, so it is only used from the main
    thread, which lives as long as the process; elsewhere the atexit guard is all there is.
    """
    wanted = set(cpus)
    prctl = _prctl() if threading.current_thread() is threading.main_thread() else None
    if not wanted and not nice and prctl is None:
        return None

    def preexec() -> None:
        if wanted:
            os.sched_setaffinity(0, wanted)
        if nice:
            os.nice(nice)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl: Callable[[int, int], int] = libc.prctl
    return prctl


class ProcessTree:
    """The launched process and every descendant seen while it ran, and how to stop them all.

    Descendants are remembered (pid -> psutil.Process) because once the API server is gone its children
    are re-parented and can no longer be found from it; `psutil.Process.is_running` guards pid reuse.
    """

    TERM_GRACE_S = 10.0  # SIGTERM can hang while streams are open ("Waiting for connections to close")

    def __init__(self, proc: subprocess.Popen[bytes], launched_at: float) -> None:
        self.proc = proc
        self.launched_at = launched_at  # time.time() of the launch, to tell our group from reused pgids
        self._seen: dict[int, Any] = {}
        self._shm: set[str] = set()  # /dev/shm files the tree had mapped

    def record(self, with_shm: bool = False) -> None:
        """Remember the current descendants (and the /dev/shm files they map)."""
        if self.proc.poll() is not None:
            return
        psutil = _psutil()
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            self._seen.setdefault(child.pid, child)
        if with_shm:
            for process in self._seen.values():
                self._shm.update(_shm_maps(process))

    def pids(self) -> list[int]:
        """The launched process and every descendant recorded so far."""
        self.record()
        return sorted({self.proc.pid, *self._seen})

    def shm_files(self) -> list[str]:
        return sorted(self._shm)

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL the top process; then SIGKILL every recorded descendant and group
        member still alive, and remove the /dev/shm files they mapped."""
        if self.proc.poll() is None:
            self.record(with_shm=True)
            _signal(self.proc, signal.SIGTERM)
            try:
                self.proc.wait(self.TERM_GRACE_S)
            except subprocess.TimeoutExpired:
                _signal(self.proc, signal.SIGKILL)
                self.proc.wait(5)
        self._kill_recorded()
        self._kill_group_stragglers(self.proc.pid)
        self._remove_shm()

    def _kill_recorded(self) -> None:
        psutil = _psutil()
        alive = [p for p in self._seen.values() if p.is_running()]
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
                if os.getpgid(process.pid) == pgid and process.info["create_time"] >= self.launched_at - 1:
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


def _psutil() -> Any:
    import psutil  # ships with vLLM; imported late so the module loads without it

    return psutil


def _shm_maps(process: Any) -> set[str]:
    psutil = _psutil()
    try:
        return {m.path for m in process.memory_maps() if m.path.startswith("/dev/shm/")}
    except psutil.Error:
        return set()
