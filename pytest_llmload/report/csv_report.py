"""`llmload.csv`: one row per cell with every statistic flattened (e2e_s_p50, ttft_s_p95, ...).

Values are in SI units (seconds, tokens/s) at full precision: the CSV is for spreadsheets and scripts,
the rounded views are the Markdown and HTML reports.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..results import CellResult, RunResult
from ..vocabulary import DISTRIBUTIONS, METRICS
from ._files import atomic_write_text

# (column prefix, CellStats attribute): the vocabulary's distributions under their llmload.json keys
_DISTS = tuple((METRICS[name].key, name) for name in DISTRIBUTIONS)
_DIST_FIELDS = ("p50", "p90", "p95", "p99", "mean", "min", "max", "count")
_SCALARS = ("total_tokens_per_s", "requests_per_s", "requests_ok", "requests_failed", "start_spread_s",
            "duration_s", "prompt_tokens_mismatches")
_CELL = ("users", "prompt_tokens", "max_tokens", "mode", "rate", "ok", "error", "valid")

COLUMNS: tuple[str, ...] = (
    _CELL + ("invalid_reasons",) + _SCALARS + ("errors",)
    + tuple(f"{prefix}_{f}" for prefix, _ in _DISTS for f in _DIST_FIELDS)
)


def cell_row(cell: CellResult) -> dict[str, Any]:
    """The CSV row of one cell; empty strings where a value does not exist."""
    row: dict[str, Any] = {k: getattr(cell, k) for k in _CELL}
    row["invalid_reasons"] = "; ".join(cell.invalid_reasons)
    stats = cell.stats
    for name in _SCALARS:
        row[name] = "" if stats is None else getattr(stats, name)
    # One column for the error counts keeps the header stable whatever errors occurred.
    row["errors"] = ";".join(f"{k}={v}" for k, v in sorted(cell.errors.items()))
    for prefix, attr in _DISTS:
        dist = None if stats is None else getattr(stats, attr)
        for f in _DIST_FIELDS:
            row[f"{prefix}_{f}"] = "" if dist is None else getattr(dist, f)
    return {k: ("" if v is None else v) for k, v in row.items()}


def render_csv(run: RunResult) -> str:
    """The CSV text of a run (header + one row per cell, in the order the cells ran)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for cell in run.cells:
        writer.writerow(cell_row(cell))
    return buf.getvalue()


def write_csv(run: RunResult, path: Path | str) -> Path:
    """Write the CSV atomically."""
    return atomic_write_text(Path(path), render_csv(run))
