"""`bencher` export: `bencher.json` in the Bencher Metric Format (BMF), for `bencher run --adapter json
--file bencher.json`.

    {"llmload u8-p63-m100": {"e2e-p50-s": {"value": 0.52, "lower_value": 0.49, "upper_value": 0.61}, ...}, ...}

One benchmark per cell; one measure per metric, its slug naming the unit (Bencher creates a measure the
first time it sees its slug). `value` is the median of the cell's valid repeats, `lower_value` and
`upper_value` their smallest and largest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..results import RunResult
from ._files import atomic_write_text
from .exports import CellValues, cell_id, cell_values

FILE_NAME = "bencher.json"


def measure_slug(cv: CellValues) -> str:
    """E.g. 'e2e-p50-s', 'ttft-p95-ms', 'total-tokens-per-s' (kebab case, under Bencher's 64 characters)."""
    unit = "" if cv.unit in ("tok/s", "req/s") else f"-{cv.unit}"
    return f"{cv.name}{unit}".replace("_", "-")


def document(run: RunResult) -> dict[str, dict[str, dict[str, Any]]]:
    """The BMF object."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for cv in cell_values(run):
        out.setdefault(f"llmload {cell_id(cv.cell)}", {})[measure_slug(cv)] = {
            "value": cv.median, "lower_value": min(cv.values), "upper_value": max(cv.values)}
    return out


def write_bencher(run: RunResult, report_dir: Path | str) -> Path:
    """Write bencher.json; its path."""
    return atomic_write_text(Path(report_dir) / FILE_NAME, json.dumps(document(run), indent=1) + "\n")
