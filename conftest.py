"""Repository-wide test settings: every vLLM process a test run starts must be gone when it ends.

Each run marks its environment with a fresh token; servers started by the tests (directly, through the
plugin, or in pytester subprocesses) inherit it. After all fixtures are torn down, any process still
carrying the token is a leak: it is listed, killed, and the run fails.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

TOKEN_VAR = "LLMLOAD_TEST_RUN"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):
        os.environ[TOKEN_VAR] = uuid.uuid4().hex


def processes_with_token(token: str) -> list[tuple[int, str]]:
    """(pid, command line) of every other process whose environment carries `token`."""
    found = []
    needle = f"{TOKEN_VAR}={token}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle in (proc / "environ").read_bytes().split(b"\0"):
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found.append((int(proc.name), cmd))
        except OSError:  # gone, or not ours to read
            continue
    return found


@pytest.fixture(name="processes_with_token")
def _processes_with_token_fixture() -> Callable[[str], list[tuple[int, str]]]:
    """`processes_with_token(token)`: for tests that give a subprocess a token of their own."""
    return processes_with_token


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    token = os.environ.get(TOKEN_VAR)
    if not token:
        return
    leaked = [(pid, cmd) for pid, cmd in processes_with_token(token) if "vllm" in cmd.lower() or "VLLM" in cmd]
    if not leaked:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for pid, cmd in leaked:
        if reporter is not None:
            reporter.write_line(f"LEAKED vLLM process {pid}: {cmd[:200]}", red=True)
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
