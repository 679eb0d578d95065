"""The end of a session without a server: baselines saved with invalid cells, comparisons, what fails
the session, and the summary lines users read."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from factories import repeated_run
from pytest_llmload.report.summary import summary_lines
from pytest_llmload.session.finish import finish_session
from pytest_llmload.options import Settings
from pytest_llmload.report.json_report import save_baseline
from pytest_llmload.session import LoadSession

SPREAD = "start spread 1.67 s > max(50 ms, 5 % of E2E p50)"


def _finished(tmp_path: Path, **settings: object) -> tuple[LoadSession, list[str], object]:
    load = LoadSession(Settings(report_dir=str(tmp_path / "report"), **settings), rootdir=tmp_path)  # type: ignore[arg-type]
    load.run = repeated_run({(8, 63): [0.60, 0.62, 0.61], (32, 63): [1.0, 1.02, 0.99]},
                            invalid={(32, 63, r): SPREAD for r in range(3)})
    state = finish_session(load)
    lines: list[str] = []
    lines += summary_lines(state)
    return load, lines, state


def test_saving_a_baseline_with_invalid_cells_warns_and_records_them(tmp_path: Path) -> None:
    _, lines, state = _finished(tmp_path, save_baseline=str(tmp_path / "base.json"))
    base = json.loads((tmp_path / "base.json").read_text())
    assert [c["valid"] for c in base["cells"]] == [True, False] * 3
    assert base["cells"][1]["invalid_reasons"] == [SPREAD]
    (warning,) = [line for line in lines if "WARNING" in line and "invalid measurement" in line]
    assert any("holds 1 session: verdicts against it cannot conclude" in line for line in lines)
    assert "holds 3 invalid measurement(s) of 6" in warning and "never used as a reference" in warning
    assert "users=32 prompt_tokens=63 max_tokens=100: start spread 1.67 s" in warning
    assert not state.gate_failed  # type: ignore[attr-defined]


def test_a_baseline_with_an_invalid_cell_is_not_a_reference_and_fails_the_gate_as_invalid(tmp_path: Path) -> None:
    save_baseline(repeated_run({(8, 63): [0.6, 0.62, 0.61], (32, 63): [0.5, 0.5, 0.5]},
                               invalid={(32, 63, r): SPREAD for r in range(3)}), tmp_path / "base.json")
    load = LoadSession(Settings(report_dir=str(tmp_path / "report"), baseline=str(tmp_path / "base.json"),
                                compare_fail=("e2e_p50:10%",)), rootdir=tmp_path)
    load.run = repeated_run({(8, 63): [0.61, 0.60, 0.62], (32, 63): [1.0, 1.02, 0.99]}, seed=1)
    state = finish_session(load)
    verdicts = {c.cell.users: c.verdict for c in state.comparisons[0].cells}
    assert verdicts == {8: "inconclusive", 32: "invalid"}  # twice as slow at 32 users: no reference
    assert state.gate_failed and not state.comparisons[0].failed
    lines: list[str] = []
    lines += summary_lines(state)
    assert any("gate: this run vs the baseline" in line and "invalid measurement in the baseline" in line
               for line in lines)
    report = json.loads((tmp_path / "report" / "llmload.json").read_text())
    assert report["extra"]["comparisons"][0]["cells"][1]["verdict"] == "invalid"


def test_inconclusive_does_not_fail_unless_strict(tmp_path: Path) -> None:
    save_baseline(repeated_run({(8, 63): [0.60, 0.78, 0.50]}), tmp_path / "base.json")
    for strict in (False, True):
        load = LoadSession(Settings(report_dir=str(tmp_path / "report"), baseline=str(tmp_path / "base.json"),
                                    compare_fail=("e2e_p50:10%",), compare_strict=strict), rootdir=tmp_path)
        load.run = repeated_run({(8, 63): [0.83, 0.55, 0.66]}, seed=1)
        state = finish_session(load)
        lines: list[str] = []
        lines += summary_lines(state)
        assert state.gate_failed is strict
        assert any("1 gate verdict(s) inconclusive: not failing the session" in line for line in lines) is not strict


def test_the_same_file_is_compared_with_then_grows_by_this_session(tmp_path: Path) -> None:
    """`--llm-baseline=b --llm-save-baseline=b`: compare with the sessions so far, then add this one;
    not when the gate failed (a regressed session is no reference)."""
    from pytest_llmload.gate.baseline import session_count
    from pytest_llmload.report.json_report import load_baseline

    path = tmp_path / "base.json"
    for i, level in enumerate([0.60, 0.61, 0.59]):
        load = LoadSession(Settings(report_dir=str(tmp_path / "report"), baseline=str(path) if i else None,
                                    save_baseline=str(path), compare_fail=("e2e_p50:10%",) if i else ()),
                           rootdir=tmp_path)
        load.run = repeated_run({(8, 63): [level, level * 1.01, level * 0.99]}, seed=i)
        state = finish_session(load)
        assert not state.gate_failed, state.gate_problems
        assert session_count(load_baseline(path)) == i + 1
    assert state.comparisons[0].cells[0].verdict in ("ok", "inconclusive")  # an unchanged third session
    load = LoadSession(Settings(report_dir=str(tmp_path / "report"), baseline=str(path), save_baseline=str(path),
                                compare_fail=("e2e_p50:10%",)), rootdir=tmp_path)
    load.run = repeated_run({(8, 63): [1.8, 1.82, 1.79]}, seed=7)  # three times slower
    state = finish_session(load)
    assert state.gate_failed and state.comparisons[0].cells[0].verdict == "regression"
    assert session_count(load_baseline(path)) == 3
    assert any("was not updated: the gate failed" in w for w in state.warnings)


def test_a_baseline_of_several_starts_is_one_session_per_start(tmp_path: Path) -> None:
    """--llm-baseline-starts: the cells measured on each start of the server become one session each."""
    from pytest_llmload.gate.baseline import session_count
    from pytest_llmload.report.json_report import load_baseline
    from pytest_llmload.session.side import START_INDEX, STARTS_KEY

    load = LoadSession(Settings(report_dir=str(tmp_path / "report"), save_baseline=str(tmp_path / "base.json"),
                                baseline_starts=2), rootdir=tmp_path)
    run = repeated_run({(8, 63): [0.60, 0.62, 0.61, 0.63, 0.60, 0.61]})
    run.cells = [dataclasses.replace(c, extra={**c.extra, START_INDEX: i // 3}) for i, c in enumerate(run.cells)]
    run.extra[STARTS_KEY] = [{"startup_s": 30.0}, {"startup_s": 31.0}]
    load.run = run
    load.a.starts = 2  # both starts were made (no server here)
    state = finish_session(load)
    base = load_baseline(str(tmp_path / "base.json"))
    assert session_count(base) == 2 and len(base.cells) == 6
    assert [s["startup_s"] for s in base.extra[STARTS_KEY]] == [30.0, 31.0]
    assert any("2 starts of the server" in note for note in state.notes)
    assert not any("holds 1 session" in w for w in state.warnings)
