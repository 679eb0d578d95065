"""The reports of a run, one module per format, and `write_reports` that writes them all.

    llmload.json + requests.jsonl   json_report   machine-readable; `read_report` reads it back
    llmload.csv                     csv_report    one row per cell, every statistic
    llmload.md                      markdown      the matrices and a per-cell summary
    report.html                     html          one self-contained page with the figures
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import ReportWriteError as ReportWriteError  # defined there; imported from here too
from ..results import RunResult
from .csv_report import write_csv
from .html import write_html
from .json_report import REPORT_NAME, SCHEMA_VERSION, GrowingReport, read_report, write_json
from .markdown import write_markdown
from .table import matrix, render_matrix

# format -> (file name in the report directory, writer)
WRITERS: dict[str, tuple[str, Callable[[RunResult, Path], Path]]] = {
    "json": (REPORT_NAME, write_json),
    "csv": ("llmload.csv", write_csv),
    "md": ("llmload.md", write_markdown),
    "html": ("report.html", write_html),
}
FORMATS = tuple(WRITERS)


def write_reports(run: RunResult, report_dir: Path | str, *, formats: Iterable[str] = FORMATS) -> list[Path]:
    """Write each requested format into `report_dir` (created if needed) and return the paths written.

    Formats are independent: one that fails does not stop the others. If any failed, ReportWriteError
    is raised after all were tried, carrying the written paths and each failure.
    """
    return _write_all(run, Path(report_dir), formats, WRITERS)


def _write_all(run: RunResult, report_dir: Path, formats: Iterable[str],
               writers: dict[str, tuple[str, Callable[[RunResult, Path], Path]]]) -> list[Path]:
    formats = list(formats)
    unknown = [f for f in formats if f not in writers]
    if unknown:
        raise ValueError(f"unknown report format(s) {unknown}; expected some of {', '.join(FORMATS)}")
    report_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    errors: dict[str, BaseException] = {}
    for fmt in formats:
        name, writer = writers[fmt]
        try:
            written.append(writer(run, report_dir / name))
        except Exception as exc:  # collected and re-raised below, after the other formats
            errors[fmt] = exc
    if errors:
        raise ReportWriteError(written, errors)
    return written


class ReportWriter:
    """The reports of one growing run in one folder (the session rewrites them after every cell): like
    `write_reports`, but `requests.jsonl` is appended cell by cell instead of rewritten."""

    def __init__(self, report_dir: Path | str) -> None:
        self.report_dir = Path(report_dir)
        self._json = GrowingReport(self.report_dir / REPORT_NAME)

    def write(self, run: RunResult, *, formats: Iterable[str] = FORMATS) -> list[Path]:
        """Write the formats; ReportWriteError (after trying all) if some failed."""
        writers = {**WRITERS, "json": (REPORT_NAME, lambda r, _path: self._json.write(r))}
        return _write_all(run, self.report_dir, formats, writers)


__all__ = ["FORMATS", "SCHEMA_VERSION", "ReportWriteError", "ReportWriter", "matrix", "read_report",
           "render_matrix", "write_reports"]
