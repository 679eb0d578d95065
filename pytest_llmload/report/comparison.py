"""A comparison of two runs (`gate.compare.Comparison`) as a text table: per-cell deltas and verdicts."""

from __future__ import annotations

from tabulate import tabulate

from ..gate.compare import DELTA_METRICS, Comparison, Delta
from .table import format_value


def render_comparison(comparison: Comparison, fmt: str = "simple") -> str:
    """A text table of per-cell deltas and verdicts, with notes on unmatched cells and forced mismatches."""
    lines = [f"Comparison with {comparison.baseline_name}: " + comparison.summary()]
    lines += [f"WARNING (forced): {m}" for m in comparison.mismatches]
    lines.append("Changes are this run vs the baseline; * marks a change for the worse "
                 "(latency up, throughput down).")
    headers = ["users", "prompt", "E2E mean (s)", *(label for label, _, _ in DELTA_METRICS[1:]), "gates", "verdict"]
    rows = [[str(c.current.users) if c.current.mode == "closed" else f"{c.current.rate:g}/s",
             str(c.current.prompt_tokens), _e2e_text(c.deltas[0]), *(_delta_text(d) for d in c.deltas[1:]),
             "\n".join(g.describe() for g in c.gates), c.verdict] for c in comparison.cells]
    lines.append(tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    lines += [f"only in this run (not compared): {c.label}" for c in comparison.only_current]
    lines += [f"only in the baseline (not measured now): {c.label}" for c in comparison.only_baseline]
    return "\n".join(lines)


def _delta_text(d: Delta) -> str:
    """'+30.0%*' (signed change; * when worse)."""
    if d.change_pct is None:
        return "-"
    return f"{d.change_pct:+.1f}%{'*' if d.worse else ''}"


def _e2e_text(d: Delta) -> str:
    """'1.9 -> 2.5 +30.0%*': the study's metric gets its values too."""
    if d.baseline is None or d.current is None:
        return "-"
    return f"{format_value(d.baseline, d.metric)} -> {format_value(d.current, d.metric)} {_delta_text(d)}"
