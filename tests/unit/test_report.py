"""Tables, llmload.json (writing and the validating reader), CSV, Markdown and write_reports."""

from __future__ import annotations

import math

import csv
import json
from pathlib import Path

import pytest

from pytest_llmload.errors import ConfigError, ReportFileError
from pytest_llmload.report import ReportWriteError, read_report, write_reports
from pytest_llmload.report import json_report
from pytest_llmload.report.csv_report import render_csv
from pytest_llmload.report.markdown import render_markdown
from pytest_llmload.report.table import INVALID, SETUP_ERROR, failure_message, matrix, render_matrix
from pytest_llmload.results import CellResult

from factories import make_run, repeat_cell, repeated_run


# -------------------------------------------------------------------------------------------- tables
def _failed(users: int, prompt: int, cause: str | None, error: str) -> CellResult:
    return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=False, error=error, cause=cause)


def test_the_dash_is_only_for_the_server_set_up_faults_are_errors_client_faults_invalid() -> None:
    run = make_run(users=(1, 2), prompts=(31,), failed=())
    run.cells += [_failed(4, 31, "server", "all 4 requests failed: http_400 x4"),
                  _failed(8, 31, "setup", "the server is at 127.0.0.1, this host's loopback ...\nfix: serve ..."),
                  _failed(16, 31, "client", "Ray load actor 1 failed: load worker 0 exited with -9"),
                  _failed(32, 31, None, "server died (exit code 0)")]  # before causes were recorded: the server's
    rows = matrix(run, "e2e", "mean")[2]
    assert [r[0] for r in rows[2:]] == [None, SETUP_ERROR, INVALID, None]
    text = render_matrix(run)
    assert [line.split()[-1] for line in text.splitlines()[3:9]][2:] == ["-", "error", "invalid", "-"]
    assert "error: the tool was set up so that it could not measure" in text
    again = [CellResult.from_dict(c.to_dict()) for c in run.cells]
    assert [c.cause for c in again] == [None, None, "server", "setup", "client", None]
    assert CellResult.from_dict({**run.cells[-1].to_dict(), "cause": None}).cause is None
    legacy = {k: v for k, v in run.cells[-1].to_dict().items() if k != "cause"}
    assert CellResult.from_dict(legacy).cause == "server"  # a file written before causes: the study's "-"


def test_failure_message_names_cause_error_and_log_tail() -> None:
    setup = _failed(8, 31, "setup", "loopback\nfix: serve on an address they reach")
    assert failure_message(setup, log_tail="INFO ready") == (
        "cell users=8 prompt_tokens=31 max_tokens=100 failed (setup): the tool was set up so that it could not "
        "measure the cell: loopback\nfix: serve on an address they reach")  # no server log: not its doing
    server = _failed(4, 31, "server", "all 4 requests failed: http_5xx x4")
    assert failure_message(server, log_tail="ERROR engine died\n").endswith(
        "(server): the server could not run the cell: all 4 requests failed: http_5xx x4\n"
        "--- last lines of the server log ---\nERROR engine died")
    assert failure_message(make_run().cells[0]) == ""


def test_matrix_rows_users_columns_prompts_none_for_failed_nan_for_missing() -> None:
    run = make_run()
    run.cells.pop(0)  # (1, 31) never ran: blank, not the study's "-"
    users, prompts, rows = matrix(run, "e2e", "mean")
    assert users == [1, 2, 4] and prompts == [31, 296]
    assert math.isnan(rows[0][0] or 0.0) and rows[2][1] is None  # (4, 296) failed: "-"
    row_1 = render_matrix(run).splitlines()[3].split()
    assert row_1[0] == "1" and len(row_1) == 2 and row_1[1] != "-"  # blank for 31, a value for 296
    assert rows[1][0] == pytest.approx(run.cell(2, 31).e2e.mean)


def test_render_matrix_like_the_study() -> None:
    text = render_matrix(make_run(), "e2e", "mean")
    lines = text.splitlines()
    assert lines[0] == "Time to resolve (s), E2E mean — model Mistral-7B"
    assert "31" in lines[1] and "296" in lines[1]
    last = lines[-1].split()
    assert last[0] == "4" and last[-1] == "-"
    assert all(len(v.split(".")[1]) == 1 for v in lines[3].split()[1:])  # one decimal, like the study


def test_render_other_metrics_units() -> None:
    run = make_run()
    assert render_matrix(run, "ttft", "p95").startswith("Time to first token (ms), TTFT p95")
    total = render_matrix(run, "total_tokens_per_s", None)
    assert total.startswith("Total tokens/s — model")
    with pytest.raises(ConfigError, match="unknown metric 'latency'"):
        render_matrix(run, "latency")
    with pytest.raises(ConfigError, match="unknown statistic 'p42'"):
        matrix(run, "e2e", "p42")


def test_a_repeated_cell_shows_the_median_of_its_valid_repeats() -> None:
    # (8, 31): three valid repeats; (8, 296): the last repeat disturbed (invalid) between two valid ones
    run = repeated_run({(8, 31): [1.0, 3.0, 2.0], (8, 296): [1.0, 1.2, 9.0]}, invalid={(8, 296, 2): "stalled"})
    _, _, rows = matrix(run, "e2e", "mean")
    assert rows[0][0] == pytest.approx(sorted(c.e2e.mean for c in run.repeats(8, 31))[1])
    valid_296 = [c.e2e.mean for c in run.repeats(8, 296) if c.valid]
    assert len(valid_296) == 2 and rows[0][1] == pytest.approx(sum(valid_296) / 2)  # not the last, invalid one
    # Counts are what was measured: the invalid repeat is not one of the medians' values.
    assert render_matrix(run).splitlines()[0] == ("Time to resolve (s), E2E mean, median of 2-3 valid repeats of 3 "
                                                  "— model m")


def test_a_repeated_cell_is_invalid_only_when_no_repeat_is_valid_and_failed_only_when_none_ran() -> None:
    run = repeated_run({(8, 31): [1.0, 1.1]}, invalid={(8, 31, 0): "stalled", (8, 31, 1): "saturated"})
    run.cells += [repeat_cell(8, 296, e2e=1.0, ok=False), repeat_cell(8, 296, e2e=1.0, ok=False)]
    run.cells.append(repeat_cell(16, 31, e2e=1.0))  # measured once: no "median of" for it alone
    _, _, rows = matrix(run, "e2e", "mean")
    assert rows[0][0] == -math.inf and rows[0][1] is None  # invalid; "-"
    assert rows[1][0] == pytest.approx(run.cell(16, 31).e2e.mean) and math.isnan(rows[1][1] or 0.0)
    assert ", median of 0-1 valid repeats of 1-2" in render_matrix(run).splitlines()[0]
    assert "invalid" in render_matrix(run)


# ------------------------------------------------------------------------------------------ llmload.json
def test_json_round_trip_with_sidecar(tmp_path: Path) -> None:
    run = make_run()
    run.cells[0].extra["gpu"] = {"util_pct": 97.0, "bad": float("nan")}
    path = json_report.write_json(run, tmp_path / "llmload.json")
    doc = json.loads(path.read_text())
    assert doc["schema_version"] == 1 and doc["generator"] == "pytest-llmload"
    assert "records" not in doc["cells"][0] and doc["records"] == "requests.jsonl"
    assert doc["cells"][0]["extra"]["gpu"]["bad"] is None  # NaN is not JSON
    back = read_report(tmp_path)  # a directory means its llmload.json
    assert back.environment == run.environment
    assert [c.records for c in back.cells] == [c.records for c in run.cells]
    assert back.cells[1] == run.cells[1]
    assert read_report(path, records=False).cells[0].records == ()


def _damage(path: Path, how: str) -> None:
    text = path.read_text()
    doc = json.loads(text)
    if how == "truncated":
        path.write_text(text[: len(text) // 2])
    elif how == "not json":
        path.write_text("hello, world\n")
    elif how == "foreign":
        path.write_text(json.dumps({"benchmarks": []}))
    elif how == "schema":
        doc["schema_version"] = 99
        path.write_text(json.dumps(doc))
    elif how == "missing field":
        del doc["cells"]
        path.write_text(json.dumps(doc))
    elif how == "bad cell":
        del doc["cells"][0]["users"]
        path.write_text(json.dumps(doc))
    elif how == "empty":
        path.write_text("")
    elif how == "binary":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")


@pytest.mark.parametrize("how, message", [
    ("truncated", "truncated or damaged"),
    ("not json", "not JSON"),
    ("foreign", "not a pytest-llmload report"),
    ("schema", "schema_version 99 is not supported"),
    ("missing field", "missing field 'cells'"),
    ("bad cell", "cells\\[0\\] misses field\\(s\\) users"),
    ("empty", "is empty"),
    ("binary", "not UTF-8"),
])
def test_read_report_rejects_damaged_files_without_touching_them(tmp_path: Path, how: str, message: str) -> None:
    path = json_report.write_json(make_run(), tmp_path / "llmload.json")
    _damage(path, how)
    before = path.read_bytes()
    with pytest.raises(ReportFileError, match=message) as info:
        read_report(path)
    assert info.value.path == path and str(path) in str(info.value)
    assert path.read_bytes() == before


def test_sidecar_of_another_run_or_missing_is_detected(tmp_path: Path) -> None:
    path = json_report.write_json(make_run(), tmp_path / "llmload.json")
    sidecar = tmp_path / "requests.jsonl"
    sidecar.write_text(sidecar.read_text().replace('"index": 0', '"index": 7', 1))
    with pytest.raises(ReportFileError, match="checksum differs") as info:
        read_report(path)
    assert info.value.path == sidecar
    sidecar.unlink()
    with pytest.raises(ReportFileError, match="missing"):
        read_report(path)
    assert len(read_report(path, records=False).cells) == 6  # the summary alone still reads


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReportFileError, match="no such file"):
        read_report(tmp_path / "nope.json")


def test_write_json_refuses_to_overwrite_a_foreign_file(tmp_path: Path) -> None:
    foreign = tmp_path / "llmload.json"
    foreign.write_text('{"mine": "precious"}')
    with pytest.raises(ReportFileError, match="refusing to overwrite"):
        json_report.write_json(make_run(), foreign)
    assert foreign.read_text() == '{"mine": "precious"}'
    # Our own file, even a damaged one, may be replaced.
    json_report.write_json(make_run(), tmp_path / "ours.json")
    _damage(tmp_path / "ours.json", "truncated")
    json_report.write_json(make_run(), tmp_path / "ours.json")
    assert len(read_report(tmp_path / "ours.json").cells) == 6


# ------------------------------------------------------------------------------------------ csv / md
def test_csv_one_row_per_cell_flattened() -> None:
    run = make_run()
    rows = list(csv.DictReader(render_csv(run).splitlines()))
    assert len(rows) == len(run.cells)
    first = rows[0]
    assert float(first["e2e_s_p50"]) == pytest.approx(run.cells[0].e2e.p50)
    assert int(first["ttft_s_count"]) == 1 and first["ok"] == "True"
    failed = next(r for r in rows if r["ok"] == "False")
    assert failed["e2e_s_p95"] == "" and failed["error"] == "server_died"


def test_markdown_has_matrices_summary_sections_and_escapes_pipes() -> None:
    run = make_run()
    run.cells[0].extra["warnings"] = ["a | b"]
    md = render_markdown(run)
    assert "### Time to resolve (s), E2E mean — model Mistral-7B" in md
    assert "| users \\\\ prompt tokens" in md or "users \\\\ prompt tokens" in md
    assert "## Cells" in md and "## Warnings" in md and "a \\| b" in md
    assert "## Environment" in md and "tensor_parallel_size" in md


# -------------------------------------------------------------------------------------- write_reports
def test_write_reports_all_formats(tmp_path: Path) -> None:
    out = tmp_path / "new" / "dir"
    paths = write_reports(make_run(), out, formats=("json", "csv", "md"))
    assert [p.name for p in paths] == ["llmload.json", "llmload.csv", "llmload.md"]
    assert (out / "requests.jsonl").exists()
    assert not list(out.glob(".*.tmp"))  # no temporary files left behind


def test_one_failing_format_does_not_stop_the_others(tmp_path: Path) -> None:
    (tmp_path / "llmload.json").write_text("not ours")  # write_json refuses to replace it
    with pytest.raises(ReportWriteError) as info:
        write_reports(make_run(), tmp_path, formats=("json", "csv", "md"))
    assert set(info.value.errors) == {"json"}
    assert [p.name for p in info.value.written] == ["llmload.csv", "llmload.md"]
    assert (tmp_path / "llmload.json").read_text() == "not ours"


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        write_reports(make_run(), tmp_path, formats=("pdf",))


def test_a_new_session_in_the_same_folder_starts_the_sidecar_afresh(tmp_path: Path) -> None:
    """The default report folder is reused by every run: a session's growing report must not append its
    records to the previous session's requests.jsonl (its checksum would then name a file that is not it)."""
    from pytest_llmload.report import ReportWriter
    from pytest_llmload.results import RunResult

    for e2e in (0.5, 0.7):  # two sessions, one after the other, in the same folder
        run, writer = RunResult(environment={"model": "m"}), ReportWriter(tmp_path)
        for users in (2, 4):
            run.cells.append(repeat_cell(users, 31, e2e=e2e))
            writer.write(run, formats=("json",))
    back = read_report(tmp_path)
    assert [len(c.records) for c in back.cells] == [2, 4]
    assert back.cells[0].records[0].end == pytest.approx(run.cells[0].records[0].end)
