"""The study's tables: rows = simultaneous users, columns = prompt tokens, one statistic per cell.

`matrix` returns the numbers (in the metric's SI unit: seconds, tokens/s); `render_matrix` prints
them like the study (seconds with one decimal, "-" for a cell the server could not run, blank for one not
measured, "invalid" for one the tool could not measure, "error" for one its set-up kept from being measured),
converting latencies below a second to milliseconds where that reads better (TTFT, ITL, TPOT).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from ..results import CellResult, RunResult
from ..vocabulary import METRICS, check_stat, metric_named

MISSING = "-"  # the study's mark for a cell that could not run: only for a failure of the server (cause "server")
NOT_MEASURED = math.nan  # a cell off the matrix (e.g. an extra 20-user cell): printed blank, not as "-"
INVALID = -math.inf  # measured, but the client could not vouch for it: printed as INVALID_MARK, never a number
INVALID_MARK = "invalid"
INVALID_LEGEND = ("invalid: measured, but the tool cannot vouch for the numbers (the client was disturbed, "
                  "or disagreed with the server); the reasons are in llmload.json (invalid_reasons) and report.html")
SETUP_ERROR = math.inf  # not measured because of the tool's own set-up (cause "setup"): printed as SETUP_MARK
SETUP_MARK = "error"
SETUP_LEGEND = ("error: the tool was set up so that it could not measure the cell (not the server's doing); "
                "the cell's error in llmload.json names the fix")
# How a failure's cause reads in messages (CellResult.cause).
CAUSE_TEXT = {
    "server": "the server could not run the cell",
    "client": "the tool could not measure the cell (invalid)",
    "setup": "the tool was set up so that it could not measure the cell",
}

Matrix = tuple[list[int], list[int], list[list[float | None]]]


def matrix(run: RunResult, metric: str = "e2e", stat: str | None = "mean") -> Matrix:
    """(users, prompt sizes, rows): rows[i][j] is the value for users[i] x prompts[j]; None = "-" (the server
    could not run the cell), NaN = not measured (printed blank, so "-" keeps the study's meaning), INVALID =
    measured but not vouched for, or the client failed; SETUP_ERROR = the tool's set-up kept it from being
    measured (`is_number` tells the values that can be used as numbers).

    Only closed-loop cells form the matrix. A cell measured several times (`--llm-repeats`) shows the
    median of its valid repeats: the last one alone may be the repeat that was disturbed.
    """
    check_stat(metric_named(metric), stat)
    users, prompts = run.matrix_axes()
    rows = [[_entry(run.repeats(u, p), metric, stat) for p in prompts] for u in users]
    return users, prompts, rows


def _entry(repeats: Sequence[CellResult], metric: str, stat: str | None) -> float | None:
    """One matrix entry from a cell's repeats: the median of the valid ones' values; INVALID when every
    repeat that ran was invalid; when none could run, None ("-") if the server failed one, else SETUP_ERROR
    or INVALID (the client failed); NOT_MEASURED when there are none."""
    if not repeats:
        return NOT_MEASURED
    ran = [c for c in repeats if c.ok]
    if not ran:
        repeats[-1].value(metric, stat)  # None; checks the metric's name
        causes = {c.cause or "server" for c in repeats}
        return None if "server" in causes else SETUP_ERROR if "setup" in causes else INVALID
    values = [v for v in (c.value(metric, stat) for c in ran if c.valid) if v is not None]
    if values:
        return statistics.median(values)
    return INVALID if any(not c.valid for c in ran) else None


def repeat_counts(run: RunResult) -> set[int]:
    """How many times the matrix's cells were measured (e.g. {3}); titles say "median of N repeats"."""
    users, prompts = run.matrix_axes()
    return {len(run.repeats(u, p)) for u in users for p in prompts} - {0}


def valid_counts(run: RunResult) -> set[int]:
    """How many repeats of the matrix's measured cells ran and can be vouched for (ok and valid)."""
    users, prompts = run.matrix_axes()
    return {sum(c.ok and c.valid for c in rs) for u in users for p in prompts if (rs := run.repeats(u, p))}


def _span(counts: set[int]) -> str:
    return f"{min(counts)}-{max(counts)}" if len(counts) > 1 else str(max(counts))


def is_number(value: float | None) -> bool:
    """Whether a matrix entry is a measurement (not "-", not blank, not invalid, not an error)."""
    return value is not None and math.isfinite(value)


def has_invalid(rows: Sequence[Sequence[float | None]]) -> bool:
    """Whether any entry is an invalid measurement (a legend is then due)."""
    return any(v == INVALID for row in rows for v in row)


def has_setup_error(rows: Sequence[Sequence[float | None]]) -> bool:
    """Whether any entry is a set-up error (a legend is then due)."""
    return any(v == SETUP_ERROR for row in rows for v in row)


def model_name(environment: dict[str, Any]) -> str:
    """The model a run measured, as reports title it ("" when unknown)."""
    for key in ("served_model_name", "model"):
        value = environment.get(key)
        if value:
            return str(value)
    return ""


def matrix_title(run: RunResult, metric: str, stat: str | None) -> str:
    """E.g. 'Time to resolve (s), E2E mean — model X' (', median of 3 repeats' when cells were repeated)."""
    m = metric_named(metric)
    title = m.title if check_stat(m, stat) is None else f"{m.title} {stat}"
    counts, valid = repeat_counts(run), valid_counts(run)
    if max(counts, default=1) > 1:
        # Counts are what was measured: a failed or invalid repeat is never counted in the median.
        if valid == counts and len(counts) == 1:
            title += f", median of {_span(counts)} repeats"
        else:
            noun = "repeat" if valid == {1} else "repeats"
            title += f", median of {_span(valid)} valid {noun} of {_span(counts)}"
    model = model_name(run.environment)
    return f"{title} — model {model}" if model else title


def format_value(value: float | None, metric: str) -> str:
    """A stored SI value printed in the metric's unit and precision, or "-"."""
    if value is None:
        return MISSING
    if value == INVALID:
        return INVALID_MARK
    if value == SETUP_ERROR:
        return SETUP_MARK
    if math.isnan(value):
        return ""
    return METRICS[metric].format(value)


def formatted_rows(users: Sequence[int], rows: Sequence[Sequence[float | None]], metric: str) -> list[list[str]]:
    """Rows of strings with the users count first, ready for tabulate or HTML."""
    return [[str(u)] + [format_value(v, metric) for v in row] for u, row in zip(users, rows)]


def render_matrix(run: RunResult, metric: str = "e2e", stat: str | None = "mean", fmt: str = "simple") -> str:
    """The matrix as text: a title line, then users down and prompt tokens across (tabulate `fmt`)."""
    users, prompts, rows = matrix(run, metric, stat)
    title = matrix_title(run, metric, stat)
    if not users:
        return f"{title}\n(no closed-loop cells)"
    headers = ["users \\ prompt tokens"] + [str(p) for p in prompts]
    # disable_numparse: values are already formatted; tabulate must not re-round "2.0" to "2".
    table = tabulate(formatted_rows(users, rows, metric), headers=headers, tablefmt=fmt,
                     disable_numparse=True, stralign="right")
    legend = (f"\n{INVALID_LEGEND}" if has_invalid(rows) else "") + (f"\n{SETUP_LEGEND}" if has_setup_error(rows) else "")
    return f"{title}\n{table}{legend}"


# The per-cell summary every report format shares: (column title, function of the cell).
def _dist_cell(name: str, stat: str) -> Any:
    return lambda c: format_value(c.value(name, stat), name)


SUMMARY_COLUMNS: list[tuple[str, Any]] = [
    ("cell", lambda c: c.label),
    ("ok", lambda c: "yes" if c.ok else f"no ({c.cause})" if c.cause else "no"),
    ("valid", lambda c: "yes" if c.valid else "NO"),
    ("requests ok/failed", lambda c: f"{c.stats.requests_ok}/{c.stats.requests_failed}" if c.stats else MISSING),
    ("E2E p50 (s)", _dist_cell("e2e", "p50")),
    ("E2E p95 (s)", _dist_cell("e2e", "p95")),
    ("TTFT p50 (ms)", _dist_cell("ttft", "p50")),
    ("TTFT p95 (ms)", _dist_cell("ttft", "p95")),
    ("TPOT mean (ms)", _dist_cell("tpot", "mean")),
    ("tok/s/user mean", _dist_cell("tokens_per_s_per_user", "mean")),
    ("total tok/s", lambda c: format_value(c.value("total_tokens_per_s", None), "total_tokens_per_s")),
    ("start spread (s)", lambda c: f"{c.stats.start_spread_s:.3f}" if c.stats else MISSING),
    ("errors", lambda c: describe_errors(c)),
    ("invalid because", lambda c: "; ".join(c.invalid_reasons)),
]


def failure_message(cell: CellResult, log_tail: str = "") -> str:
    """Why a cell is no measurement, for a failed test: the cell, who is at fault, its error or the reasons
    it is invalid, and for a server fault `log_tail` (the server log's last lines) unless the error carries
    them already (a server that died); "" for a good cell."""
    if cell.ok and cell.valid:
        return ""
    cause = cell.cause or ("server" if not cell.ok else "client")
    why = (cell.error if not cell.ok else "; ".join(cell.invalid_reasons)) or "no reason recorded"
    message = f"cell {cell.label} failed ({cause}): {CAUSE_TEXT.get(cause, cause)}: {why}"
    if cause == "server" and log_tail.strip() and "--- last lines of the server log ---" not in why:
        message += f"\n--- last lines of the server log ---\n{log_tail.rstrip()}"
    return message


def describe_errors(cell: CellResult) -> str:
    """'timeout=3, http_5xx=1', plus the cell's own error when it could not run at all."""
    parts = [f"{k}={v}" for k, v in sorted(cell.errors.items())]
    if cell.error:
        parts.append(cell.error)
    return ", ".join(parts)


def summary_table(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the per-cell summary, one row per cell in the order they ran."""
    headers = [name for name, _ in SUMMARY_COLUMNS]
    rows = [[str(get(cell)) for _, get in SUMMARY_COLUMNS] for cell in run.cells]
    return headers, rows


def invalid_table(run: RunResult) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): every invalid cell with the reasons the tool could not vouch for it."""
    rows = [[c.label, reason] for c in run.cells if not c.valid for reason in c.invalid_reasons]
    return ["cell", "why it is not a measurement"], rows
