"""Content that several report formats share: the environment, the matrices shown, and the optional
per-cell sections other modules put in `CellResult.extra` (GPU telemetry, server metrics, physical
limit, warnings). Those are rendered generically — a table of whatever keys exist — so the reports
do not need to change when the modules that fill them do.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..results import RunResult

# (metric, stat) of the matrices every human-readable report shows, the study's table first.
REPORT_MATRICES: tuple[tuple[str, str | None], ...] = (
    ("e2e", "mean"),
    ("e2e", "p95"),
    ("ttft", "p50"),
    ("ttft", "p95"),
    ("tpot", "mean"),
    ("tokens_per_s_per_user", "mean"),
    ("total_tokens_per_s", None),
)

# Known sections first, in this order; any other key found in `extra` follows, sorted.
KNOWN_SECTIONS = ("physical_limit", "gpu", "server_metrics", "warnings")
SECTION_TITLES = {
    "physical_limit": "Physical limit (percentage of the bound)",
    "gpu": "GPU telemetry",
    "server_metrics": "Server metrics (/metrics)",
    "warnings": "Warnings",
}


def text(value: Any) -> str:
    """A value as report text: floats to 4 significant digits, containers as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str, sort_keys=True, separators=(", ", ": "))
    return str(value)


def environment_rows(environment: dict[str, Any]) -> list[list[str]]:
    """[key, value] rows; nested dicts become dotted keys so each row stays one fact."""
    rows: list[list[str]] = []
    for key, value in environment.items():
        if isinstance(value, dict) and value:
            rows.extend([f"{key}.{k}", v] for k, v in environment_rows(value))
        else:
            rows.append([str(key), text(value)])
    return rows


def section_names(run: RunResult) -> list[str]:
    """The extra sections present in any cell, known ones first."""
    present = {k for c in run.cells for k in c.extra}
    return [k for k in KNOWN_SECTIONS if k in present] + sorted(present - set(KNOWN_SECTIONS))


def section_title(name: str) -> str:
    """How a section is headed."""
    return SECTION_TITLES.get(name, name.replace("_", " ").capitalize())


def _items(value: Any) -> list[dict[str, Any]]:
    """A section value of one cell as rows: a dict is one row, a list one row per item."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v if isinstance(v, dict) else {"value": v} for v in values]


def section_table(run: RunResult, name: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of one section: the cell, then the union of the keys found, in first-seen order."""
    labelled = [(c.label, item) for c in run.cells if name in c.extra for item in _items(c.extra[name])]
    keys: dict[str, None] = {}
    for _, item in labelled:
        keys.update(dict.fromkeys(str(k) for k in item))
    headers = ["cell", *keys]
    rows = [[label, *(text(item.get(k)) for k in keys)] for label, item in labelled]
    return headers, rows


def run_sections(run: RunResult) -> list[tuple[str, list[str], list[str], list[list[str]], list[str]]]:
    """Run-level sections as (title, lines before, headers, rows, lines after): the server starts (time to
    ready, first TTFT) and each comparison (per-repeat gate values and verdicts)."""
    from .comparison import comparison_rows, head_lines, tail_lines  # noqa: PLC0415 - comparison imports table

    out: list[tuple[str, list[str], list[str], list[list[str]], list[str]]] = []
    starts = [s for s in run.extra.get("server_starts") or [] if isinstance(s, dict)]
    if starts:
        rows = [[str(i + 1), _seconds(s.get("startup_s"), 1), _seconds(s.get("first_ttft_s"), 1000)]
                for i, s in enumerate(starts)]
        out.append(("Server starts", ["Time to ready: launch to /health and /v1/models answering; first TTFT: the "
                                      "first request after ready (a probe, not a cell)."],
                    ["start", "time to ready (s)", "first TTFT (ms)"], rows, []))
    for doc in run.extra.get("comparisons") or []:
        if isinstance(doc, dict):
            headers, rows = comparison_rows(doc)
            title = f"Comparison: {doc.get('current_name', 'this run')} vs {doc.get('baseline_name', 'baseline')}"
            out.append((title, head_lines(doc), headers, rows, tail_lines(doc)))
    return out


def _seconds(value: Any, scale: float) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value * scale:.3g}"
