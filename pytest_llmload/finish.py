"""End of a session: the remaining repeats, every report, baselines saved and compared, the A/B
comparison, and the terminal summary.

Runs from `pytest_sessionfinish`, also when the session failed or was interrupted, so partial results
are always on disk. In order:

1. repeats: every cell measured gets its remaining `--llm-repeats` (in passes over the cells; on both
   servers in an A/B session); with a gate on `startup` / `first_ttft`, the launched servers are started
   again until each has as many starts (A and B alternating);
2. comparisons: this run against `--llm-baseline`, the candidate against this run;
3. the baseline is saved: this session is added to a baseline of the same deployment (`gate/baseline.py`),
   unless a gate failed; a warning names invalid cells (recorded as such, never used as a reference);
4. reports (the comparisons go into `llmload.json` under `extra.comparisons`).

`gate_failed` says whether the session must fail: a regression, an invalid measurement under a gate, or
(with `--llm-compare-strict`) an inconclusive verdict.
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
    from .vocabulary import Gate


@dataclass
class FinishState:
    """What the summary prints: report paths, the comparisons, the reference, warnings and problems."""

    paths: list[Path] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    reference_text: str | None = None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    gate_problems: list[str] = field(default_factory=list)  # what failed the gate, one line each
    inconclusive: int = 0  # gate verdicts that were inconclusive (fail the session only when strict)
    gate_failed: bool = False

    @property
    def comparison(self) -> Comparison | None:
        """The first comparison (with the baseline when there is one)."""
        return self.comparisons[0] if self.comparisons else None


def finish_session(load: LoadSession, config: Any = None) -> FinishState:
    """Complete the repeats, save and compare, write reports; `gate_failed` says how the gates went."""
    state = FinishState()
    if not load.run.cells:
        return state
    s = load.settings
    gates = _gates(load)
    if not load.run.interrupted:
        _guard(state, "measuring the remaining repeats", lambda: _complete_repeats(load, state))
    if any(g.run_level for g in gates) and not load.run.interrupted:
        _guard(state, "measuring more server starts", lambda: _sample_starts(load, s.effective_repeats))
    if (baseline := s.baseline) is not None:
        _guard(state, "comparing with the baseline", lambda: _compare(load, state, baseline, gates), fails_gate=True)
    if load.candidate is not None:
        _guard(state, "comparing the candidate", lambda: _compare_candidate(load, state, gates), fails_gate=True)
    # --llm-allow-invalid turns invalid measurements under a gate into warnings, as for objectives.
    _judge(state, s.compare_strict, allow_invalid=s.allow_invalid)
    if (save_to := s.save_baseline) is not None:  # after comparing: the same file may be both
        _guard(state, "saving the baseline", lambda: _save_baseline(load, state, save_to))
    load.run.extra["comparisons"] = [c.to_dict() for c in state.comparisons]
    state.paths = load.write_reports()
    if load.candidate is not None and load.candidate.run.cells:
        load.candidate.run.interrupted = load.run.interrupted
        state.paths += load.candidate.write_reports()
        state.problems += load.candidate.report_errors
    state.problems += load.report_errors
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


def _gates(load: LoadSession) -> list[Gate]:
    from .vocabulary import parse_gate

    return [parse_gate(g) for g in load.settings.compare_fail]


def _complete_repeats(load: LoadSession, state: FinishState) -> None:
    """The repeats the tests did not measure; Ctrl-C stops them and marks the run interrupted."""
    try:
        load.complete_repeats()
    except KeyboardInterrupt:
        load.run.interrupted = True
        state.problems.append("interrupted while measuring the remaining repeats: the comparison uses what was "
                              "measured")


def _sample_starts(load: LoadSession, starts: int) -> None:
    """Start each launched server until it has `starts` starts (A and B alternating), after stopping the
    session's own servers so that every start finds the machine as the first one did."""
    sides = [load] if load.candidate is None else [load, load.candidate]
    load.close()
    for i in range(1, starts):
        for side in sides if i % 2 == 0 else reversed(sides):
            side.sample_start()


def _save_baseline(load: LoadSession, state: FinishState, path: str) -> None:
    """Add this session to the baseline at `path` (a new one, or one of the same deployment), unless a
    gate failed: a session that regressed is no reference."""
    from .errors import ReportFileError
    from .gate.baseline import add_session
    from .report.json_report import load_baseline, save_baseline

    if state.gate_failed:
        state.warnings.append(f"the baseline {path} was not updated: the gate failed in this session")
        return
    try:
        existing = load_baseline(path) if Path(path).exists() else None
    except ReportFileError as exc:
        existing = None
        state.warnings.append(f"the baseline {path} could not be read and is started over: {exc.problem}")
    baseline, note = add_session(existing, load.run)
    save_baseline(baseline, path)
    state.notes.append(f"baseline {path}: {note}")
    invalid = [c for c in load.run.cells if c.ok and not c.valid]
    if invalid:
        named = "; ".join(f"{c.label}: {', '.join(c.invalid_reasons) or 'no reason given'}" for c in invalid[:6])
        state.warnings.append(f"the baseline {path} holds {len(invalid)} invalid measurement(s) of "
                              f"{len(load.run.cells)}, recorded as invalid and never used as a reference: {named}")
    if load.settings.effective_repeats < 2:
        state.warnings.append(f"the baseline {path} has one repeat per cell: verdicts against it will be "
                              "inconclusive (one run cannot show the noise between runs; --llm-repeats 3)")


def _compare(load: LoadSession, state: FinishState, baseline_path: str, gates: list[Gate]) -> None:
    from .gate.compare import compare
    from .report.json_report import load_baseline

    baseline = load_baseline(baseline_path)
    state.comparisons.append(compare(load.run, baseline, gates, force=load.settings.compare_force,
                                     baseline_name=f"the baseline {baseline_path}", current_name="this run"))


def _compare_candidate(load: LoadSession, state: FinishState, gates: list[Gate]) -> None:
    from .gate.compare import compare

    assert load.candidate is not None
    if not load.candidate.run.cells:
        raise _NothingCompared("the candidate server measured no cell (see the problems above)")
    state.comparisons.append(compare(load.candidate.run, load.run, gates, kind="candidate",
                                     baseline_name="A", current_name="B (candidate)", sides=("in B", "in A")))


class _NothingCompared(LLMLoadError):
    """An A/B session whose candidate has nothing to compare."""


def _judge(state: FinishState, strict: bool, allow_invalid: bool = False) -> None:
    """Whether the gates fail the session: regressions and invalid measurements; inconclusive when strict."""
    for comparison in state.comparisons:
        state.gate_problems += comparison.problems(strict, allow_invalid)
        state.inconclusive += len(comparison.with_verdict("inconclusive"))
        if allow_invalid:
            state.warnings += [f"invalid measurement under a gate (allowed): {label}: {g.describe()}"
                               for label, g in comparison.with_verdict("invalid")]
    state.gate_failed = state.gate_failed or bool(state.gate_problems)


def _reference(load: LoadSession, state: FinishState, reference: str) -> None:
    from .report.reference import reference_from, render_ratio

    state.reference_text = render_ratio(load.run, reference_from(reference))


def _bench_export(load: LoadSession, config: Any) -> None:
    from .report.bench_export import add_cells_to_benchmark_session

    add_cells_to_benchmark_session(config, load.run)


def terminal_summary(load: LoadSession, state: FinishState, write_line: Callable[[str], None]) -> None:
    """The study-style matrices (the candidate's too), then comparisons, reference, paths and problems."""
    from .report.comparison import render_comparison
    from .report.table import render_matrix

    if not load.run.cells:
        return
    sides = [("A (this session's server):", load)] if load.candidate is not None else [("", load)]
    if load.candidate is not None and load.candidate.run.cells:
        sides.append(("B (candidate):", load.candidate))
    write_line("")
    for heading, side in sides:
        if heading:
            write_line(heading)
        for metric in load.settings.report_metrics:
            for line in render_matrix(side.run, metric).splitlines():
                write_line(line)
            write_line("")
    for comparison in state.comparisons:
        for line in render_comparison(comparison).splitlines():
            write_line(line)
        write_line("")
    if state.reference_text:
        for line in state.reference_text.splitlines():
            write_line(line)
    if state.paths:
        write_line(f"pytest-llmload reports: {load.report_dir()}")
    for note in state.notes:
        write_line(f"pytest-llmload: {note}")
    for warning in state.warnings:
        write_line(f"pytest-llmload: WARNING: {warning}")
    for problem in state.problems:
        write_line(f"pytest-llmload: {problem}")
    if state.inconclusive and not load.settings.compare_strict:
        write_line(f"pytest-llmload: {state.inconclusive} gate verdict(s) inconclusive: not failing the session "
                   "(--llm-compare-strict fails it)")
    for problem in state.gate_problems:
        write_line(f"pytest-llmload: gate: {problem}")
    if state.gate_failed:
        write_line("pytest-llmload: regression gate FAILED (see the comparison above)")
