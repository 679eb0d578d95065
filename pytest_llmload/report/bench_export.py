"""Hand each cell's per-request E2E latencies to pytest-benchmark, so that its own tooling works on them:
`--benchmark-autosave`, `--benchmark-compare`, `--benchmark-compare-fail`, `pytest-benchmark compare`.

Opt-in: only when the user asks pytest-benchmark to keep or compare results (`--benchmark-save`,
`--benchmark-autosave`, `--benchmark-json`, `--benchmark-compare`, `--benchmark-histogram`). Otherwise
pytest-benchmark would print a second, wide table of every cell after this plugin's own matrices.

Each closed-loop cell becomes one benchmark named ``llmload_e2e[users=U-prompt_tokens=P-max_tokens=M]``
(open-loop cells ``[rate=R-...]``) in the group ``llmload e2e``, with one "round" per successful request
of its valid repeats (`--llm-repeats`: pooled into the one entry). A repeat the tool could not vouch for
(invalid) is left out, as it is everywhere a number is reported; a cell without a valid repeat has no
entry.
pytest-benchmark builds a `Metadata` from the fixture of a timed test; we build the same object from
a small stand-in carrying the names, so its saving, comparing and tables treat our cells like any
other benchmark. pytest_benchmark is imported lazily: this module must not pull in pytest.

The entries must be added before pytest-benchmark's `pytest_sessionfinish` wrapper saves them, i.e.
from a `pytest_sessionfinish` hookwrapper marked `tryfirst=True`, before its `yield`.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from .table import model_name
from ..results import CellResult, RunResult

GROUP = "llmload e2e"
BENCH_PREFIX = "llmload_e2e"


@dataclass
class _CellFixture:
    """What `pytest_benchmark.stats.Metadata` reads from a `BenchmarkFixture`."""

    name: str
    fullname: str
    group: str
    param: str
    params: dict[str, Any]
    extra_info: dict[str, Any] = field(default_factory=dict)
    cprofile_stats: Any = None
    has_error: bool = False


def benchmark_param(cell: CellResult) -> str:
    """The parameter id of a cell, e.g. 'users=8-prompt_tokens=296-max_tokens=100'."""
    head = f"rate={cell.rate:g}" if cell.mode == "open" else f"users={cell.users}"
    return f"{head}-prompt_tokens={cell.prompt_tokens}-max_tokens={cell.max_tokens}"


def _fixture(cell: CellResult, environment: dict[str, Any], valid: list[CellResult], left_out: int) -> _CellFixture:
    param = benchmark_param(cell)
    params: dict[str, Any] = {"users": cell.users, "prompt_tokens": cell.prompt_tokens, "max_tokens": cell.max_tokens}
    if cell.mode == "open":
        params["rate"] = cell.rate
    stats = [c.stats for c in valid if c.stats is not None]
    extra: dict[str, Any] = {"model": model_name(environment), "metric": "e2e_s", "repeats": len(valid),
                             "invalid_repeats_left_out": left_out,
                             "requests_failed": sum(st.requests_failed for st in stats),
                             "total_tokens_per_s": statistics.median(st.total_tokens_per_s for st in stats)}
    name = f"{BENCH_PREFIX}[{param}]"
    # fullname is what --benchmark-compare matches saved runs on: stable across runs and test files.
    return _CellFixture(name=name, fullname=f"pytest-llmload::{name}", group=GROUP, param=param,
                        params=params, extra_info=extra)


def _by_cell(run: RunResult) -> dict[str, list[CellResult]]:
    """The run's cells grouped by their parameter id, in the order first measured."""
    groups: dict[str, list[CellResult]] = {}
    for cell in run.cells:
        groups.setdefault(benchmark_param(cell), []).append(cell)
    return groups


def benchmark_entries(run: RunResult) -> list[Any]:
    """One `pytest_benchmark.stats.Metadata` per cell with at least one successful request in a valid repeat."""
    from pytest_benchmark.stats import Metadata  # lazily: pytest-benchmark imports pytest

    entries = []
    for repeats in _by_cell(run).values():
        valid = [c for c in repeats if c.ok and c.valid]
        samples = [r.e2e for c in valid for r in c.records if r.ok]
        if not samples:
            continue  # no number to give: pytest-benchmark's statistics would fail on an empty entry
        left_out = sum(1 for c in repeats if c.ok and not c.valid)
        meta = Metadata(_fixture(repeats[-1], run.environment, valid, left_out),  # type: ignore[no-untyped-call]
                        iterations=1, options={"source": "pytest-llmload", "metric": "e2e", "unit": "s"})
        for s in samples:
            meta.update(s)  # type: ignore[no-untyped-call]
        entries.append(meta)
    return entries


def export_requested(session: Any) -> bool:
    """Whether the user asked pytest-benchmark (its session object) to store, export or compare results."""
    return any(getattr(session, name, None) for name in ("save", "autosave", "json", "compare", "histogram"))


BENCHMARK_PLUGIN_NAME = "pytest-benchmark"  # the name pytest-benchmark registers its session plugin under


def benchmark_session(config: Any) -> Any:
    """pytest-benchmark's session, found as the plugin it registers itself as (`pytest_configure`:
    `config.pluginmanager.register(session, "pytest-benchmark")`); None when it is not active."""
    session = config.pluginmanager.get_plugin(BENCHMARK_PLUGIN_NAME)
    return session if hasattr(session, "benchmarks") else None


def add_cells_to_benchmark_session(config: Any, run: RunResult) -> int:
    """Append the run's cells to pytest-benchmark's session; returns how many were added.

    Does nothing (returns 0) when pytest-benchmark is not active or is disabled
    (`-p no:benchmark`, `--benchmark-disable`, xdist), or when the user asked it for no storage, export
    or comparison (`export_requested`). Cells already added are replaced, so calling it again with a
    grown run does not duplicate them.
    """
    session = benchmark_session(config)
    if session is None or getattr(session, "disabled", False) or not export_requested(session):
        return 0
    entries = benchmark_entries(run)
    names = {e.fullname for e in entries}
    session.benchmarks[:] = [b for b in session.benchmarks if getattr(b, "fullname", None) not in names]
    session.benchmarks.extend(entries)
    return len(entries)
