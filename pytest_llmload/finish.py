"""End of a session: write every report, save / compare baselines, and build the terminal summary.

Runs from `pytest_sessionfinish`, also when the session failed or was interrupted, so partial results
are always on disk. Returns whether a regression gate failed, for the plugin to set the exit status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LLMLoadError
from .session import LoadSession

if TYPE_CHECKING:
    from .gate.compare import Comparison


@dataclass
class FinishState:
    """What the summary prints: report paths, the comparison, the reference and any problems."""

    paths: list[Path] = field(default_factory=list)
    comparison: Comparison | None = None
    reference_text: str | None = None
    problems: list[str] = field(default_factory=list)
    gate_failed: bool = False


def finish_session(load: LoadSession, config: Any = None) -> FinishState:
    """Write reports, save the baseline, run the comparison gate; `gate_failed` says how it went."""
    state = FinishState()
    if not load.run.cells:
        return state
    state.paths = load.write_reports()
    state.problems += load.report_errors
    s = load.settings
    if (save_to := s.save_baseline) is not None:
        _guard(state, "saving the baseline", lambda: _save_baseline(load, save_to))
    if (baseline := s.baseline) is not None:
        _guard(state, "comparing with the baseline", lambda: _compare(load, state, baseline), fails_gate=True)
    if (reference := s.reference) is not None:
        _guard(state, "reading the reference", lambda: _reference(load, state, reference))
    if config is not None:  # only where the user asked pytest-benchmark to store or compare (bench_export)
        _guard(state, "storing cells for pytest-benchmark", lambda: _bench_export(load, config))
    return state


def _guard(state: FinishState, what: str, action: Callable[[], None], *, fails_gate: bool = False) -> None:
    """Run one end-of-session step; a problem is reported, and fails the session only where it is a gate."""
    try:
        action()
    except (LLMLoadError, OSError) as exc:
        state.problems.append(f"{what}: {exc}")
        state.gate_failed = state.gate_failed or fails_gate


def _save_baseline(load: LoadSession, path: str) -> None:
    from .report.json_report import save_baseline

    save_baseline(load.run, path)


def _compare(load: LoadSession, state: FinishState, baseline_path: str) -> None:
    from .gate.compare import compare
    from .report.json_report import load_baseline
    from .vocabulary import parse_gate

    s = load.settings
    gates = [parse_gate(g) for g in s.compare_fail]
    baseline = load_baseline(baseline_path)
    state.comparison = compare(load.run, baseline, gates, force=s.compare_force)
    state.gate_failed = bool(state.comparison.failed)


def _reference(load: LoadSession, state: FinishState, reference: str) -> None:
    from .report.reference import reference_from, render_ratio

    state.reference_text = render_ratio(load.run, reference_from(reference))


def _bench_export(load: LoadSession, config: Any) -> None:
    from .report.bench_export import add_cells_to_benchmark_session

    add_cells_to_benchmark_session(config, load.run)


def terminal_summary(load: LoadSession, state: FinishState, write_line: Callable[[str], None]) -> None:
    """The study-style matrices, then comparison, reference, report paths and problems."""
    from .report.comparison import render_comparison
    from .report.table import render_matrix

    if not load.run.cells:
        return
    write_line("")
    for metric in load.settings.report_metrics:
        for line in render_matrix(load.run, metric).splitlines():
            write_line(line)
        write_line("")
    if state.comparison is not None:
        for line in render_comparison(state.comparison).splitlines():
            write_line(line)
    if state.reference_text:
        for line in state.reference_text.splitlines():
            write_line(line)
    if state.paths:
        write_line(f"pytest-llmload reports: {load.report_dir()}")
    for problem in state.problems:
        write_line(f"pytest-llmload: {problem}")
    if state.gate_failed:
        write_line("pytest-llmload: regression gate FAILED (see the comparison above)")
