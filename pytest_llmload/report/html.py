"""`report.html`: one self-contained page — matrices, figures as inline PNG, per-cell summary,
optional sections and the environment. No scripts and no external URLs, so it opens offline, from a
CI artifact, or attached to a mail. Every text that comes from a run is escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from ..results import RunResult
from . import plots
from ._files import atomic_write_text
from .sections import REPORT_MATRICES, environment_rows, run_sections, section_names, section_table, section_title
from .table import INVALID_LEGEND, MISSING, SETUP_LEGEND, formatted_rows, invalid_table, matrix, matrix_title, model_name, summary_table

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #1b1b1b; line-height: 1.4; }
h1 { font-size: 1.6em; border-bottom: 2px solid #3b6ea5; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 2em; color: #23476e; }
h3 { font-size: 1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; margin: .3em 0 1em; font-size: .9em; }
th, td { border: 1px solid #c9d2dc; padding: .25em .6em; }
th { background: #eef2f6; }
.grid { display: flex; flex-wrap: wrap; column-gap: 2.5em; }
table.matrix td { text-align: right; font-variant-numeric: tabular-nums; }
table.matrix th[scope=row] { text-align: right; }
td.missing { color: #999; text-align: center; }
table.verdicts td { white-space: pre-line; }
table.kv td:first-child { font-family: ui-monospace, monospace; white-space: nowrap; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e8ee; }
figcaption { font-size: .85em; color: #555; }
.notice { background: #fff4d6; border: 1px solid #e8c35a; padding: .5em 1em; }
nav ul { columns: 2; }
footer { margin-top: 3em; font-size: .8em; color: #777; }
"""


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, cls: str = "",
               row_headers: bool = False) -> str:
    """An escaped HTML table; with `row_headers` the first column is a header column (users)."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = "".join(f"<tr>{_row(r, row_headers)}</tr>" for r in rows)
    cls_attr = f' class="{escape(cls)}"' if cls else ""
    return f"<table{cls_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _row(cells: Sequence[str], row_headers: bool) -> str:
    out = []
    for i, c in enumerate(cells):
        if i == 0 and row_headers:
            out.append(f'<th scope="row">{escape(c)}</th>')
        elif c == MISSING:
            out.append(f'<td class="missing">{MISSING}</td>')
        else:
            out.append(f"<td>{escape(c)}</td>")
    return "".join(out)


def _matrix_html(run: RunResult, metric: str, stat: str | None) -> str:
    users, prompts, rows = matrix(run, metric, stat)
    headers = ["users \\ prompt tokens", *(str(p) for p in prompts)]
    table = html_table(headers, formatted_rows(users, rows, metric), cls="matrix", row_headers=True)
    return f'<div class="matrix-box"><h3>{escape(matrix_title(run, metric, stat))}</h3>\n{table}</div>'


# (anchor, caption, drawing function) of every figure, in page order.
FIGURES: tuple[tuple[str, str, Callable[[RunResult], bytes | None]], ...] = (
    ("fig-tokens-per-user", "Tokens/s per user vs simultaneous users, one line per prompt size (study Fig. 1)",
     plots.tokens_per_user_vs_users),
    ("fig-total-tokens", "Total tokens/s vs simultaneous users, one line per prompt size (study Fig. 2)",
     plots.total_tokens_vs_users),
    ("fig-e2e-heatmap", "E2E mean (s) over users x prompt size", plots.e2e_heatmap),
    ("fig-e2e-box", "E2E per request, per cell", lambda run: plots.latency_boxplots(run, "e2e")),
    ("fig-ttft-box", "TTFT per request, per cell", lambda run: plots.latency_boxplots(run, "ttft")),
)


def _figure_html(anchor: str, caption: str, draw: Callable[[RunResult], bytes | None], run: RunResult) -> str:
    try:
        png = draw(run)
    except Exception as exc:  # a figure that cannot be drawn must not cost the rest of the report
        return f'<p class="notice" id="{anchor}">{escape(caption)}: could not be drawn ({escape(repr(exc))})</p>'
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure id="{anchor}"><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _trend_drawing(doc: dict[str, Any], metric: str) -> Callable[[RunResult], bytes | None]:
    return lambda _run: plots.history_trend(doc, metric)


def _trend_html(doc: dict[str, Any]) -> str:
    """The history's sessions and, per metric, one plot per cell (`plots.history_trend`)."""
    sessions = doc.get("sessions") or []
    current = doc.get("current")
    rows = [[str(i), str(s.get("finished_utc") or ""), str(s.get("label") or ""), str(s.get("vllm_version") or ""),
             "interrupted" if s.get("interrupted") else "", "this session" if i == current else ""]
            for i, s in enumerate(sessions)]
    note = (f"<p>{len(sessions)} session(s) of this deployment in {escape(str(doc.get('path')))}: each dot a repeat "
            "(hollow: invalid), the line the median of the valid ones, red: this session, green band: the baseline "
            "(a 95 % prediction interval for one more session), dashed: the vLLM version changed.</p>")
    figures = "".join(_figure_html(f"trend-{m}", f"{m} per cell over the sessions", _trend_drawing(doc, str(m)),
                                   RunResult()) for m in doc.get("metrics") or [])
    table = html_table(["session", "finished (UTC)", "label", "vLLM", "", ""], rows)
    return note + figures + table


def render_html(run: RunResult) -> str:
    """The whole page as a string."""
    model = model_name(run.environment)
    title = "pytest-llmload report" + (f" — {model}" if model else "")
    sections: list[tuple[str, str, str]] = []  # (anchor, heading, body)
    if run.matrix_axes()[0]:
        note = ('<p>Rows: simultaneous users; columns: prompt tokens; "-": the server could not run the cell (the '
                f'study&#x27;s mark); blank: not measured; {escape(INVALID_LEGEND)}; {escape(SETUP_LEGEND)}.</p>')
        grid = "\n".join(_matrix_html(run, m, s) for m, s in REPORT_MATRICES)
        sections.append(("matrices", "Matrices", f'{note}<div class="grid">{grid}</div>'))
        missing = plots.unavailable()
        figures = (f'<p class="notice">{escape(missing)}</p>' if missing
                   else "\n".join(_figure_html(a, c, d, run) for a, c, d in FIGURES))
        if figures.strip():
            sections.append(("figures", "Figures", figures))
    from .history import TREND_KEY  # noqa: PLC0415 - sqlite3 and the gates load only for a report

    if isinstance(trend := run.extra.get(TREND_KEY), dict):
        sections.append(("trend", "Trend over the history", _trend_html(trend)))
    invalid = invalid_table(run)
    if invalid[1]:
        sections.append(("invalid", "Invalid measurements", html_table(*invalid)))
    sections.append(("cells", "Cells", html_table(*summary_table(run))))
    for i, (heading, before, headers, rows, after) in enumerate(run_sections(run)):
        text = "".join(f"<p>{escape(line)}</p>" for line in before)
        tail = "".join(f"<p>{escape(line)}</p>" for line in after)
        sections.append((f"run-{i}", heading, f'{text}{html_table(headers, rows, cls="verdicts")}{tail}'))
    for i, name in enumerate(section_names(run)):
        sections.append((f"extra-{i}", section_title(name), html_table(*section_table(run, name))))
    if run.environment:
        sections.append(("environment", "Environment",
                         html_table(["key", "value"], environment_rows(run.environment), cls="kv")))
    return _page(title, run.interrupted, sections)


def _page(title: str, interrupted: bool, sections: list[tuple[str, str, str]]) -> str:
    toc = "".join(f'<li><a href="#{a}">{escape(h)}</a></li>' for a, h, _ in sections)
    body = "\n".join(f'<section id="{a}"><h2>{escape(h)}</h2>\n{b}</section>' for a, h, b in sections)
    notice = '<p class="notice">The run was interrupted: some cells are missing.</p>' if interrupted else ""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{notice}<nav><ul>{toc}</ul></nav>\n{body}\n"
        f"<footer>Generated by pytest-llmload.</footer>\n</body></html>\n"
    )


def write_html(run: RunResult, path: Path | str) -> Path:
    """Write the page atomically."""
    return atomic_write_text(Path(path), render_html(run))
