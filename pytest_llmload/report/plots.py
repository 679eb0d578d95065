"""The report's figures as PNG bytes, drawn with matplotlib's Agg canvas.

Figures are built on `matplotlib.figure.Figure` directly rather than through pyplot, so plotting never
touches pyplot's global state or the user's backend (a pytest run may have a GUI backend configured).
Every function returns None when the run has nothing to draw.

matplotlib and numpy are the optional extra `plots`: without them `unavailable()` says so, with the
install command, and report.html shows that note in place of the figures.
"""

from __future__ import annotations

import importlib.util
import io
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..results import RunResult
from .table import format_value, is_number, matrix, model_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 96
INSTALL_HINT = "pip install 'pytest-llmload[plots]'"


def unavailable() -> str | None:
    """Why the figures cannot be drawn here (matplotlib or numpy is not installed), with the install
    command; None when they can."""
    missing = [name for name in ("matplotlib", "numpy") if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"the figures need {' and '.join(missing)}, not installed here: {INSTALL_HINT}"


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, list[Axes]]:
    # Imported here: matplotlib is slow to import and only the HTML report needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Matplotlib warns (into the user's pytest output) when a figure is too small for its labels to be
        # laid out; the figure is still drawn, only less tidy: not the user's concern.
        warnings.filterwarnings("ignore", message="constrained_layout not applied", category=UserWarning)
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _users_axis(ax: Axes, users: Sequence[int]) -> None:
    # The study doubles the users at each step, so a log2 axis spaces the points evenly.
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(users), [str(u) for u in users])
    ax.minorticks_off()
    ax.set_xlabel("simultaneous users")
    ax.grid(True, alpha=0.3)


def _lines_per_prompt(run: RunResult, metric: str, stat: str | None, ylabel: str, title: str) -> bytes | None:
    users, prompts, rows = matrix(run, metric, stat)
    if not any(is_number(v) for row in rows for v in row):
        return None
    fig, (ax,) = _figure(7.5, 4.5)
    for j, p in enumerate(prompts):
        points = [(u, row[j]) for u, row in zip(users, rows) if is_number(row[j])]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker="o", label=f"{p} tokens")
    _users_axis(ax, users)
    ax.set_ylabel(ylabel)
    ax.set_title(_with_model(run, title))
    ax.legend(title="prompt", fontsize="small")
    return _png(fig)


def _with_model(run: RunResult, title: str) -> str:
    model = model_name(run.environment)
    return f"{title} — {model}" if model else title


def tokens_per_user_vs_users(run: RunResult) -> bytes | None:
    """The study's Fig. 1: mean tokens/s seen by each user against the number of users, per prompt size."""
    return _lines_per_prompt(run, "tokens_per_s_per_user", "mean", "tokens/s per user (mean)",
                             "Tokens/s per user vs users")


def total_tokens_vs_users(run: RunResult) -> bytes | None:
    """The study's Fig. 2: the server's total tokens/s against the number of users, per prompt size."""
    return _lines_per_prompt(run, "total_tokens_per_s", None, "total tokens/s", "Total tokens/s vs users")


def e2e_heatmap(run: RunResult) -> bytes | None:
    """E2E mean over users x prompt size, annotated with the seconds; failed cells are left blank."""
    import numpy as np

    users, prompts, rows = matrix(run, "e2e", "mean")
    if not any(v is not None for row in rows for v in row):
        return None
    values = np.array([[v if is_number(v) else math.nan for v in row] for row in rows])
    data = np.ma.masked_invalid(values)  # type: ignore[no-untyped-call]
    fig, (ax,) = _figure(1.2 + 0.9 * len(prompts), 1.2 + 0.5 * len(users))
    image = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(prompts)), [str(p) for p in prompts])
    ax.set_yticks(range(len(users)), [str(u) for u in users])
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("simultaneous users")
    ax.set_title(_with_model(run, "Time to resolve (s), E2E mean"))
    _annotate(ax, rows)
    fig.colorbar(image, ax=ax, label="seconds")
    return _png(fig)


def _annotate(ax: Axes, rows: list[list[float | None]]) -> None:
    values = [v for row in rows for v in row if v is not None and is_number(v)]
    middle = (min(values) + max(values)) / 2
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            # Dark text on the bright end of viridis, light text on the dark end.
            if v is None or not is_number(v):
                label, color = format_value(v, "e2e"), "black"
            else:
                label, color = f"{v:.1f}", "black" if v > middle else "white"
            ax.text(j, i, label, ha="center", va="center", color=color, fontsize="small")


def latency_boxplots(run: RunResult, metric: str = "e2e") -> bytes | None:
    """Per-request distributions of `metric` ("e2e" or "ttft", seconds): one panel per prompt size,
    one box per users count. Needs the per-request records."""
    users, prompts = run.matrix_axes()
    panels = [(p, _samples_by_users(run, users, p, metric)) for p in prompts]
    panels = [(p, s) for p, s in panels if s]
    if not panels:
        return None
    # At most four panels a row, so that the figure stays readable at the page's width.
    ncols = min(4, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(3.0 * ncols, 0.4 + 3.0 * nrows, nrows=nrows, ncols=ncols)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (p, samples) in zip(axes, panels):
        positions = list(range(len(samples)))
        ax.boxplot([s for _, s in samples], positions=positions, widths=0.6, showfliers=True,
                   flierprops={"markersize": 3})
        ax.set_xticks(positions, [str(u) for u, _ in samples])
        ax.set_title(f"prompt {p} tokens", fontsize="medium")
        ax.set_xlabel("users")
        ax.grid(True, axis="y", alpha=0.3)
    for row in range(nrows):
        axes[row * ncols].set_ylabel(f"{metric.upper()} (s)")
    fig.suptitle(_with_model(run, f"{metric.upper()} per request"))
    return _png(fig)


def _samples_by_users(run: RunResult, users: list[int], prompt: int, metric: str) -> list[tuple[int, list[float]]]:
    out = []
    for u in users:
        try:
            cell = run.cell(u, prompt)
        except KeyError:
            continue
        values = [getattr(r, metric) for r in cell.records if r.ok]
        values = [v for v in values if v is not None]
        if values:
            out.append((u, values))
    return out


def history_trend(doc: dict[str, Any], metric: str) -> bytes | None:
    """One small plot per cell of a statistic over the history's sessions (`report/history.trend`): each
    repeat a dot (hollow: invalid), the session's median a line, this session in red, the baseline's band
    shaded, a dashed line where the vLLM version changes."""
    from .history import _metric  # noqa: PLC0415
    from ..vocabulary import METRICS  # noqa: PLC0415

    cells = [c for c in doc.get("cells") or [] if (c.get("series") or {}).get(metric)]
    if not cells:
        return None
    sessions, current = doc.get("sessions") or [], doc.get("current")
    scale = METRICS[_metric(metric)[0]].scale
    cols = min(4, len(cells))
    rows = math.ceil(len(cells) / cols)
    fig, axes = _figure(3.2 * cols, 2.2 * rows, rows, cols)
    changes = [i for i in range(1, len(sessions)) if sessions[i].get("vllm_version") != sessions[i - 1].get("vllm_version")]
    for ax, cell in zip(axes, cells):
        points = cell["series"][metric]
        medians = []
        for p in points:
            vals = [(v * scale, ok) for v, ok in p["values"] if v is not None]
            good = sorted(v for v, ok in vals if ok)
            colour = "tab:red" if p["session"] == current else "tab:blue"
            for v, ok in vals:
                ax.plot([p["session"]], [v], "o", ms=3, color=colour, mfc=colour if ok else "none")
            if good:
                medians.append((p["session"], good[len(good) // 2]))
        if medians:
            xs, ys = zip(*medians)
            ax.plot(xs, ys, "-", color="tab:blue", lw=1)
        band = (cell.get("band") or {}).get(metric)
        if band:
            ax.axhspan(band[0] * scale, band[1] * scale, color="tab:green", alpha=0.15)
        for i in changes:
            ax.axvline(i - 0.5, color="grey", ls="--", lw=0.8)
            ax.annotate(f"vLLM {sessions[i].get('vllm_version')}", (i - 0.5, 1), xycoords=("data", "axes fraction"),
                        fontsize=6, rotation=90, va="top", ha="right", color="grey")
        ax.set_title(cell["cell"], fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlim(-0.5, max(len(sessions) - 0.5, 0.5))
    for ax in axes[len(cells):]:
        ax.set_visible(False)
    return _png(fig)
