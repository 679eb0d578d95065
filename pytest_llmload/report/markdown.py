"""`llmload.md`: the matrices as Markdown tables, the per-cell summary and the optional sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..results import RunResult
from ._files import atomic_write_text
from .sections import REPORT_MATRICES, environment_rows, run_sections, section_names, section_table, section_title
from .table import INVALID_LEGEND, SETUP_LEGEND, formatted_rows, invalid_table, matrix, matrix_title, model_name, summary_table


def _md_escape(cell: str) -> str:
    # A "|" inside a cell would end it; newlines would end the row.
    return cell.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table of strings (escaped; tabulate does not escape)."""
    return str(tabulate([[_md_escape(c) for c in r] for r in rows], headers=[_md_escape(h) for h in headers],
                        tablefmt="github", disable_numparse=True))


def _matrix_md(run: RunResult, metric: str, stat: str | None) -> str:
    users, prompts, rows = matrix(run, metric, stat)
    headers = ["users \\ prompt tokens", *(str(p) for p in prompts)]
    return f"### {_md_escape(matrix_title(run, metric, stat))}\n\n{md_table(headers, formatted_rows(users, rows, metric))}\n"


def render_markdown(run: RunResult) -> str:
    """The whole Markdown report."""
    model = model_name(run.environment)
    parts = [f"# pytest-llmload report{' — ' + _md_escape(model) if model else ''}\n"]
    if run.interrupted:
        parts.append("**The run was interrupted: some cells are missing.**\n")
    if run.matrix_axes()[0]:
        parts.append("## Matrices\n\nRows: simultaneous users; columns: prompt tokens; \"-\": the server could not run "
                     f"the cell (the study's mark); blank: not measured; {INVALID_LEGEND}; {SETUP_LEGEND}.\n")
        parts.extend(_matrix_md(run, m, s) for m, s in REPORT_MATRICES)
    invalid = invalid_table(run)
    if invalid[1]:
        parts.append("## Invalid measurements\n\n" + md_table(*invalid) + "\n")
    parts.append("## Cells\n\n" + md_table(*summary_table(run)) + "\n")
    for title, before, headers, rows, after in run_sections(run):
        lines = "".join(f"{_md_escape(line)}\n\n" for line in before)
        tail = "".join(f"\n{_md_escape(line)}\n" for line in after)
        parts.append(f"## {_md_escape(title)}\n\n{lines}{md_table(headers, rows)}\n{tail}")
    for name in section_names(run):
        parts.append(f"## {_md_escape(section_title(name))}\n\n{md_table(*section_table(run, name))}\n")
    if run.environment:
        parts.append("## Environment\n\n" + md_table(["key", "value"], environment_rows(run.environment)) + "\n")
    return "\n".join(parts)


def write_markdown(run: RunResult, path: Path | str) -> Path:
    """Write the Markdown report atomically."""
    return atomic_write_text(Path(path), render_markdown(run))


def render_step_summary(comparisons: list[dict[str, Any]], verdict: dict[str, Any], model: str = "") -> str:
    """What a CI job's summary page shows (GitHub's `$GITHUB_STEP_SUMMARY`): the session's verdict, each
    gate's counts, and each comparison's table (A -> B, or the baseline -> this run) as Markdown."""
    from .comparison import comparison_rows, head_lines, render_verdict_counts, tail_lines

    title = f"## pytest-llmload: {verdict.get('verdict', 'none')}{' — ' + _md_escape(model) if model else ''}\n"
    parts = [title]
    counts = render_verdict_counts(comparisons)
    if counts:
        parts.append("".join(f"- {_md_escape(line)}\n" for line in counts.splitlines()))
    for doc in comparisons:
        head = head_lines(doc)
        parts.append(f"### {_md_escape(head[0])}\n\n" + "".join(f"{_md_escape(line)}\n\n" for line in head[1:]))
        headers, rows = comparison_rows(doc)
        if rows:
            parts.append(md_table(headers, rows) + "\n")
        parts.append("".join(f"{_md_escape(line)}\n\n" for line in tail_lines(doc)))
    return "\n".join(parts)


def append_step_summary(path: Path | str, text: str) -> None:
    """Append to the job summary file (others' steps write to it too: never overwrite)."""
    with open(path, "a", encoding="utf-8") as out:
        out.write(text if text.endswith("\n") else text + "\n")
