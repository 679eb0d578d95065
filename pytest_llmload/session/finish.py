"""The end of a session: the remaining repeats, start samples, every report, baselines saved and
compared, the A/B comparison; the outcome as a `report.summary.Summary`.

Runs from `pytest_sessionfinish`, before the session closes its servers, also when the session failed
or was interrupted, so partial results are always on disk. In order:

1. repeats: every cell measured gets its remaining `--llm-repeats` (in passes over the cells; on every
   side in an A/B session), on the servers the tests used, which are still up; with a gate on
   `startup` / `first_ttft`, the launched servers are then stopped and started again until each has as
   many starts (sides alternating);
2. comparisons: this run against `--llm-baseline`, the candidate (B) against A;
3. the baseline is saved: this session is added to a baseline of the same deployment (`gate/baseline.py`),
   unless a gate failed; the terminal names every failed or invalid repeat it holds;
4. reports (the comparisons go into `llmload.json` under `extra.comparisons`).

`gate_failed` says whether the session must fail: a regression, an invalid measurement or a measurement
that could not be made under a gate, or (with `--llm-compare-strict`) an inconclusive verdict.
"""

from __future__ import annotations

import os

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LLMLoadError
from ..report.summary import Summary
from .core import LoadSession

if TYPE_CHECKING:
    from ..results import CellResult, RunResult
    from ..vocabulary import Gate


def finish_session(load: LoadSession, config: Any = None) -> Summary:
    """Complete the repeats, save and compare, write reports; `gate_failed` says how the gates went."""
    s = load.settings
    state = Summary(sides=_headed_runs(load), metrics=tuple(s.report_metrics), report_dir=load.report_dir(),
                    strict=s.compare_strict)
    if not load.run.cells:
        return state
    gates = _gates(load)
    gating = bool(gates) or s.baseline is not None or load.b is not None
    if not load.run.interrupted:
        # A repeat that could not be measured (a server gone) leaves a gate without its data: it fails it.
        _guard(state, "measuring the remaining repeats", lambda: _complete_repeats(load, state), fails_gate=gating)
    if s.auto_repeats and not load.run.interrupted:
        _guard(state, "repeating until the gates conclude", lambda: _repeat_until_conclusive(load, state, gates),
               fails_gate=True)
    if s.save_baseline is not None and s.baseline_starts > 1 and load.a.launched and not load.run.interrupted:
        _guard(state, "measuring the baseline's other starts", lambda: _baseline_starts(load, s.baseline_starts))
    if any(g.run_level for g in gates) and not load.run.interrupted:
        _guard(state, "measuring more server starts", lambda: load.sample_starts(s.effective_repeats),
               fails_gate=True)
    if (baseline := s.baseline) is not None:
        _guard(state, "comparing with the baseline", lambda: _compare(load, state, baseline, gates), fails_gate=True)
    if load.b is not None:
        _guard(state, "comparing the candidate", lambda: _compare_candidate(load, state, gates), fails_gate=True)
    # --llm-allow-invalid turns invalid measurements under a gate into warnings, as for objectives.
    _judge(state, allow_invalid=s.allow_invalid)
    if load.b is not None:
        state.notes.append(f"A/B: {'the sides took turns' if load.ab_mode == 'alternate' else 'both servers up at once'}"
                           f" ({load.ab_mode}): {load.ab_why}")
    state.notes += _cold_notes(load)
    if (save_to := s.save_baseline) is not None:  # after comparing: the same file may be both
        _guard(state, "saving the baseline", lambda: _save_baseline(load, state, save_to))
    load.run.extra["comparisons"] = [c.to_dict() for c in state.comparisons]
    if state.comparisons:  # what CI acts on: the session's verdict and each gate's
        _guard(state, "writing the verdicts", lambda: _verdicts(load, state))
    if s.history:  # also when interrupted: the history keeps what was measured, marked so
        _guard(state, "appending to the history", lambda: _history(load, state))
    state.paths = load.write_reports()
    state.problems += load.report_errors
    if s.export:
        _guard(state, "writing exports", lambda: _exports(load, state))
    if (reference := s.reference) is not None:
        _guard(state, "reading the reference", lambda: _reference(load, state, reference))
    if config is not None:  # only where the user asked pytest-benchmark to store or compare (bench_export)
        _guard(state, "storing cells for pytest-benchmark", lambda: _bench_export(load, config))
    return state


def _headed_runs(load: LoadSession) -> list[tuple[str, RunResult]]:
    if load.b is None:
        return [("", load.run)]
    return [("A (this session's server):", load.run), ("B (candidate):", load.b.run)]


def _guard(state: Summary, what: str, action: Callable[[], None], *, fails_gate: bool = False) -> None:
    """Run one end-of-session step; a problem is reported, and fails the session only where it is a gate."""
    try:
        action()
    except (LLMLoadError, OSError) as exc:
        state.problems.append(f"{what}: {exc}")
        if fails_gate:
            state.gate_problems.append(f"{what} failed: the gate cannot judge what was not measured")
            state.gate_failed = True


def _gates(load: LoadSession) -> list[Gate]:
    from ..vocabulary import parse_gate

    return [parse_gate(g) for g in load.settings.compare_fail]


def _complete_repeats(load: LoadSession, state: Summary) -> None:
    """The repeats the tests did not measure; Ctrl-C stops them and marks the run interrupted."""
    try:
        load.complete_repeats()
    except KeyboardInterrupt:
        load.run.interrupted = True
        state.problems.append("interrupted while measuring the remaining repeats: the comparison uses what was "
                              "measured")


def _repeat_until_conclusive(load: LoadSession, state: Summary, gates: list[Gate]) -> None:
    """--llm-repeats auto: one more repeat a side of the undecided cells per look (session/auto.py)."""
    from ..report.json_report import load_baseline
    from .auto import AUTO_KEY, Pair, repeat_until_conclusive

    s = load.settings
    baseline = None if s.baseline is None else load_baseline(s.baseline, like=load.run.environment)

    def pairs() -> list[Pair]:
        out = [] if baseline is None else [Pair(load.run, baseline, ("now", "in the baseline"), by_session=True)]
        if load.b is not None:
            out.append(Pair(load.b.run, load.run, ("in B", "in A"), by_session=False))
        return out

    try:
        record = repeat_until_conclusive(load, pairs, gates)
    except KeyboardInterrupt:
        load.run.interrupted = True
        state.problems.append("interrupted while repeating until the gates conclude: the comparison uses what "
                              "was measured")
        return
    load.run.extra[AUTO_KEY] = record.to_dict()
    state.notes.append(record.note())


def _confidence(load: LoadSession) -> float:
    """The comparisons' confidence: the looks' under --llm-repeats auto, else the fixed-repeats one."""
    from ..gate.stats import CONFIDENCE
    from .auto import confidence

    return confidence(load.settings) or CONFIDENCE


def _baseline_starts(load: LoadSession, starts: int) -> None:
    """--llm-baseline-starts: A's server started again until it has `starts` starts, every cell measured
    with all its repeats on each (each start becomes one session of the baseline)."""
    while load.a.starts < starts:
        load.measure_on_another_start()


def _cold_notes(load: LoadSession) -> list[str]:
    """The warm-up runs: the cost of a cold start, reported apart from the repeats."""
    from .side import COLD_KEY

    notes = []
    for side in load.sides:
        cold = side.run.extra.get(COLD_KEY) or []
        if cold:
            name = f"side {side.name}: " if load.b is not None else ""
            notes.append(f"{name}{len(cold)} warm-up run(s) after the server's start(s), not in the repeats "
                         f"(--llm-warmup; llmload.json extra.{COLD_KEY})")
    return notes


def _sessions_of_starts(run: RunResult) -> list[RunResult]:
    """A run measured over several starts of its server, split into one run per start (a baseline's
    sessions), each with its own start."""
    from ..results import RunResult
    from .side import START_INDEX, STARTS_KEY

    indices = sorted({c.extra.get(START_INDEX, 0) for c in run.cells})
    starts = run.extra.get(STARTS_KEY) or []
    return [RunResult(environment=run.environment, cells=[c for c in run.cells if c.extra.get(START_INDEX, 0) == i],
                      interrupted=run.interrupted,
                      extra={**run.extra, STARTS_KEY: starts[i:i + 1] if i < len(starts) else []})
            for i in indices]


def _save_baseline(load: LoadSession, state: Summary, path: str) -> None:
    """Add this session to the baseline at `path` (a new one, or one of the same deployment), unless a
    gate failed: a session that regressed is no reference."""
    from ..errors import ReportFileError
    from ..gate.baseline import add_session, session_count
    from ..report.json_report import load_baseline, save_baseline

    if state.gate_failed:
        state.warnings.append(f"the baseline {path} was not updated: the gate failed in this session")
        return
    try:
        existing = load_baseline(path) if Path(path).exists() else None
    except ReportFileError as exc:
        existing = None
        state.warnings.append(f"the baseline {path} could not be read and is started over: {exc.problem}")
    runs = _sessions_of_starts(load.run) if load.settings.baseline_starts > 1 else [load.run]
    for run in runs:  # each start of the server one session of the baseline
        existing, note = add_session(existing, run)
    assert existing is not None
    save_baseline(existing, path)
    state.notes.append(f"baseline {path}: {note}" + (f" ({len(runs)} starts of the server)" if len(runs) > 1 else ""))
    if session_count(existing) < 2:
        state.warnings.append(f"the baseline {path} holds 1 session: verdicts against it cannot conclude (the spread "
                              "between sessions is unknown). Save into it again from another session, or start the "
                              "server several times now: --llm-baseline-starts 3")
    state.warnings += _baseline_warnings(load.run.cells, path)
    if load.settings.effective_repeats < 2:
        state.warnings.append(f"the baseline {path} has one repeat per cell: verdicts against it will be "
                              "inconclusive (one run cannot show the noise between runs; --llm-repeats 3)")


def _baseline_warnings(cells: list[CellResult], path: str) -> list[str]:
    """What the saved baseline holds that is no measurement: failed and invalid repeats, named."""
    out = []
    failed = [c for c in cells if not c.ok]
    if failed:
        named = "; ".join(f"{c.label}: {(c.error or 'no reason given').splitlines()[0]}" for c in failed[:6])
        out.append(f"the baseline {path} holds {len(failed)} failed measurement(s) of {len(cells)}: {named}")
    invalid = [c for c in cells if c.ok and not c.valid]
    if invalid:
        named = "; ".join(f"{c.label}: {', '.join(c.invalid_reasons) or 'no reason given'}" for c in invalid[:6])
        out.append(f"the baseline {path} holds {len(invalid)} invalid measurement(s) of {len(cells)}, recorded "
                   f"as invalid and never used as a reference: {named}")
    return out


def _compare(load: LoadSession, state: Summary, baseline_path: str, gates: list[Gate]) -> None:
    from ..gate.baseline import session_count
    from ..gate.compare import compare
    from ..report.json_report import load_baseline

    baseline = load_baseline(baseline_path, like=load.run.environment)
    state.notes += [f"baseline: {n}" for n in baseline.extra.get("import_notes") or []]
    if session_count(baseline) < 2:
        state.warnings.append(f"the baseline {baseline_path} holds 1 session: its verdicts cannot conclude (a "
                              "session differs from the next by more than its repeats show). Add sessions to it "
                              "(--llm-save-baseline into the same file) or save it with --llm-baseline-starts 3")
    state.comparisons.append(compare(load.run, baseline, gates, force=load.settings.compare_force,
                                     baseline_name=f"the baseline {baseline_path}", current_name="this run",
                                     confidence=_confidence(load)))


def _compare_candidate(load: LoadSession, state: Summary, gates: list[Gate]) -> None:
    from ..gate.compare import compare

    assert load.b is not None
    if not load.b.run.cells:
        raise _NothingCompared("the candidate server measured no cell (see the problems above)")
    state.comparisons.append(compare(load.b.run, load.run, gates, kind="candidate",
                                     baseline_name="A", current_name="B (candidate)", sides=("in B", "in A"),
                                     confidence=_confidence(load)))


class _NothingCompared(LLMLoadError):
    """An A/B session whose candidate has nothing to compare."""


def _judge(state: Summary, allow_invalid: bool = False) -> None:
    """Whether the gates fail the session: regressions and invalid measurements; inconclusive when strict."""
    for comparison in state.comparisons:
        state.gate_problems += comparison.problems(state.strict, allow_invalid)
        state.inconclusive += len(comparison.with_verdict("inconclusive"))
        if allow_invalid:
            state.warnings += [f"invalid measurement under a gate (allowed): {label}: {g.describe()}"
                               for label, g in comparison.with_verdict("invalid")]
    state.gate_failed = state.gate_failed or bool(state.gate_problems)


def _verdicts(load: LoadSession, state: Summary) -> None:
    """`llmload.json`'s `extra.verdict`; appended to `$GITHUB_STEP_SUMMARY` as Markdown when it is set."""
    from ..report.comparison import gate_verdicts
    from ..report.markdown import append_step_summary, render_step_summary
    from ..report.table import model_name

    docs = load.run.extra["comparisons"]
    load.run.extra["verdict"] = verdict = gate_verdicts(docs)
    if step_summary := os.environ.get("GITHUB_STEP_SUMMARY"):
        append_step_summary(step_summary, render_step_summary(docs, verdict, model_name(load.run.environment)))


def _history(load: LoadSession, state: Summary) -> None:
    """This session appended to --llm-history, and the trend of its cells (for report.html)."""
    from ..report.history import TREND_KEY, append_session, trend, trend_metrics
    from ..report.json_report import load_baseline

    s = load.settings
    assert s.history is not None
    sid = append_session(s.history, load.run, label=s.history_label, gate_failed=state.gate_failed)
    baseline = load_baseline(s.baseline, like=load.run.environment) if s.baseline else None
    load.run.extra[TREND_KEY] = trend(s.history, load.run, session_id=sid, metrics=trend_metrics(s.compare_fail),
                                      baseline=baseline)
    state.notes.append(f"history {s.history}: this session appended"
                       + (f" (label {s.history_label})" if s.history_label else ""))


def _exports(load: LoadSession, state: Summary) -> None:
    from ..report.exports import write_exports

    state.paths += write_exports(load.run, load.settings.export, load.report_dir())


def _reference(load: LoadSession, state: Summary, reference: str) -> None:
    from ..report.reference import reference_from, render_ratio

    state.reference_text = render_ratio(load.run, reference_from(reference))


def _bench_export(load: LoadSession, config: Any) -> None:
    from ..report.bench_export import add_cells_to_benchmark_session

    add_cells_to_benchmark_session(config, load.run)
