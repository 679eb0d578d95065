"""`github-benchmark` export: github-action-benchmark's custom tools, one file per direction.

    github-benchmark-smaller.json   tool: 'customSmallerIsBetter'   latencies (s, ms)
    github-benchmark-bigger.json    tool: 'customBiggerIsBetter'    throughputs (tok/s, req/s)

Each file is a JSON array of the action's `BenchmarkResult` objects (its `extractCustomBenchmarkResult`
reads `name`, `value`, `unit`, `range`, `extra`): one per cell and metric, the value the median of the
cell's valid repeats, `range` "± half the spread between them", `extra` the repeats and the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..results import RunResult
from ._files import atomic_write_text
from .exports import CellValues, cell_id, cell_values
from .table import model_name

SMALLER = "github-benchmark-smaller.json"
BIGGER = "github-benchmark-bigger.json"


def entries(run: RunResult) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(smaller-is-better entries, bigger-is-better entries)."""
    model = model_name(run.environment)
    smaller: list[dict[str, Any]] = []
    bigger: list[dict[str, Any]] = []
    for cv in cell_values(run):
        (bigger if cv.higher_is_better else smaller).append(_entry(cv, model))
    return smaller, bigger


def _entry(cv: CellValues, model: str) -> dict[str, Any]:
    spread = (max(cv.values) - min(cv.values)) / 2
    repeats = " ".join(f"{v:.6g}" for v in cv.values)
    extra = f"{cv.cell.label}; {len(cv.values)} valid repeat(s): {repeats}" + (f"; model {model}" if model else "")
    return {"name": f"{cv.name} [{cell_id(cv.cell)}]", "unit": cv.unit, "value": cv.median,
            "range": f"± {spread:.6g}", "extra": extra}


def write_github_benchmark(run: RunResult, report_dir: Path | str) -> list[Path]:
    """Write both files (an empty array where a direction has no value); their paths."""
    smaller, bigger = entries(run)
    root = Path(report_dir)
    return [atomic_write_text(root / SMALLER, json.dumps(smaller, indent=1) + "\n"),
            atomic_write_text(root / BIGGER, json.dumps(bigger, indent=1) + "\n")]
