"""What the end of a session prints in pytest's terminal summary: the study-style matrices of every
side, the comparisons and verdicts, the reference, report paths, notes, warnings and problems.

`session/finish.py` fills a `Summary`; this module only renders it (no session object needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..gate.compare import Comparison
    from ..results import RunResult


@dataclass
class Summary:
    """The outcome of a session's end: what it wrote, compared and found, and whether the gate failed."""

    sides: list[tuple[str, RunResult]] = field(default_factory=list)  # (heading, run); heading "" alone
    metrics: tuple[str, ...] = ()
    report_dir: Path | None = None
    paths: list[Path] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    reference_text: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    gate_problems: list[str] = field(default_factory=list)  # what failed the gate, one line each
    inconclusive: int = 0  # gate verdicts that were inconclusive (fail the session only when strict)
    strict: bool = False
    gate_failed: bool = False

    @property
    def comparison(self) -> Comparison | None:
        """The first comparison (with the baseline when there is one)."""
        return self.comparisons[0] if self.comparisons else None


def summary_lines(summary: Summary) -> list[str]:
    """The lines of the terminal summary (none when no cell was measured)."""
    if not any(run.cells for _, run in summary.sides):
        return []
    return [""] + _matrices(summary) + _comparisons(summary) + _closing(summary)


def _matrices(summary: Summary) -> list[str]:
    from .table import render_matrix

    lines: list[str] = []
    for heading, run in summary.sides:
        if not run.cells:
            continue
        if heading:
            lines.append(heading)
        for metric in summary.metrics:
            lines += render_matrix(run, metric).splitlines() + [""]
    return lines


def _comparisons(summary: Summary) -> list[str]:
    from .comparison import render_comparison, render_verdict_counts

    lines: list[str] = []
    for comparison in summary.comparisons:
        lines += render_comparison(comparison).splitlines() + [""]
    if counts := render_verdict_counts(summary.comparisons):
        lines += ["Verdicts:", *(f"  {line}" for line in counts.splitlines()), ""]
    if summary.reference_text:
        lines += summary.reference_text.splitlines()
    return lines


def _closing(summary: Summary) -> list[str]:
    lines = [f"pytest-llmload reports: {summary.report_dir}"] if summary.paths else []
    lines += [f"pytest-llmload: {note}" for note in summary.notes]
    lines += [f"pytest-llmload: WARNING: {warning}" for warning in summary.warnings]
    lines += [f"pytest-llmload: {problem}" for problem in summary.problems]
    if summary.inconclusive and not summary.strict:
        lines.append(f"pytest-llmload: {summary.inconclusive} gate verdict(s) inconclusive: not failing the session "
                     "(--llm-compare-strict fails it)")
    lines += [f"pytest-llmload: gate: {problem}" for problem in summary.gate_problems]
    if summary.gate_failed:
        lines.append("pytest-llmload: regression gate FAILED (see the comparison above)")
    return lines
