"""pytest-llmload: the performance of an LLM server as pytest assertions.

Data flow: options -> server/ (which model, launch or attach) -> load/ (prompts, client, runner) ->
results + metrics (records -> statistics, named by vocabulary) -> observe/ (what the server and GPUs did)
-> gate/ (capacity, comparisons) + objectives -> report/ -> session/ (sides, plan, fixtures, finish) -> plugin.
The engine works without pytest:

    from pytest_llmload import LoadRunner, CellSpec
    with LoadRunner("http://127.0.0.1:8000", "my-model") as runner:
        cell = runner.run_cell(CellSpec(users=32, prompt_tokens=480))
        print(cell.e2e.p95, cell.tokens_per_s_per_user.p50)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .gate.capacity import CapacityResult, find_max_users
from .errors import (
    BaselineMismatchError,
    ConfigError,
    Inconclusive,
    LLMLoadError,
    ReportFileError,
    ServerError,
    ServerStartError,
    SetupError,
    SLOViolation,
)
from .metrics import cell_stats
from .options import Settings
from .objectives import SLO
from .results import CellResult, CellSpec, CellStats, RequestRecord, RunResult
from .vocabulary import Distribution

__version__ = "0.1.0"

# Heavier modules load on first use so `import pytest_llmload` (done by pytest for every run) stays cheap.
_LAZY = {
    "LoadRunner": "load.runner",
    "VLLMServer": "server.launch",
    "AttachedServer": "server.attach",
    "ServerSpec": "server.spec",
    "PRESETS": "server.presets",
    "build_tiny_model": "server.tiny",
    "read_report": "report.json_report",
    "write_reports": "report",
    "save_baseline": "report.json_report",
    "load_baseline": "report.json_report",
    "compare": "gate.compare",
    "LoadSession": "session",
}

__all__ = [
    "AttachedServer",
    "BaselineMismatchError",
    "CapacityResult",
    "CellResult",
    "CellSpec",
    "CellStats",
    "ConfigError",
    "Distribution",
    "Inconclusive",
    "LLMLoadError",
    "LoadRunner",
    "LoadSession",
    "PRESETS",
    "ReportFileError",
    "RequestRecord",
    "RunResult",
    "SLO",
    "SLOViolation",
    "ServerError",
    "ServerSpec",
    "ServerStartError",
    "Settings",
    "SetupError",
    "VLLMServer",
    "__version__",
    "build_tiny_model",
    "cell_stats",
    "compare",
    "find_max_users",
    "load_baseline",
    "read_report",
    "save_baseline",
    "write_reports",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
