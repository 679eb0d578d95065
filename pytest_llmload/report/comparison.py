"""Comparisons as text: per-cell deltas, per-repeat values of each gate and the verdicts, both sides
side by side. Renders the JSON form (`Comparison.to_dict()`, as `llmload.json` carries it under
`extra.comparisons`), so the terminal, Markdown and HTML reports show the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tabulate import tabulate

from ..gate.compare import Comparison
from ..vocabulary import any_metric
from .table import format_value

# The deltas the tables show (the terminal is narrow): E2E mean with its values, then changes only.
SHOWN_DELTAS = ("E2E mean", "E2E p95", "TTFT p50", "total tok/s")
MAX_CONTEXT_LINES = 8


def render_comparison(comparison: Comparison | dict[str, Any], fmt: str = "simple") -> str:
    """A text table of per-cell deltas, per-repeat gate values and verdicts, with the notes around it."""
    doc = comparison.to_dict() if isinstance(comparison, Comparison) else comparison
    lines = head_lines(doc)
    headers, rows = comparison_rows(doc)
    if rows:
        lines.append(tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True))
    lines += tail_lines(doc)
    return "\n".join(lines)


def _names(doc: dict[str, Any]) -> tuple[str, str, str, str]:
    """(current name, baseline name, current side, baseline side), e.g. ('B (candidate)', 'A', 'in B', 'in A')."""
    now, then = (doc.get("sides") or ["now", "in the baseline"])[:2]
    return str(doc.get("current_name", "this run")), str(doc.get("baseline_name", "baseline")), str(now), str(then)


def head_lines(doc: dict[str, Any]) -> list[str]:
    """The title, what differs between the two runs, and how to read the table."""
    cur, base, now, then = _names(doc)
    lines = [f"Comparison of {cur} with {base}: {doc.get('summary', '')}"]
    diffs = doc.get("differences") or []
    for d in [d for d in diffs if d.get("deployment")]:
        label = "WARNING (forced)" if doc.get("forced") else "differs (deployment)"
        lines.append(f"{label}: {_difference(d, now, then)}")
    context = [d for d in diffs if not d.get("deployment")]
    lines += [f"differs: {_difference(d, now, then)}" for d in context[:MAX_CONTEXT_LINES]]
    if len(context) > MAX_CONTEXT_LINES:
        lines.append(f"differs: ... and {len(context) - MAX_CONTEXT_LINES} more (see llmload.json)")
    lines.append(f"Changes are {cur} vs {base}; * marks a change for the worse (latency up, throughput down). "
                 f"Gate values are per repeat, {base} -> {cur} (| separates a baseline's sessions); values in "
                 "parentheses were left out.")
    return lines


def _difference(d: dict[str, Any], now: str, then: str) -> str:
    return f"{d.get('key')}: {_short(d.get('now'))} {now}, {_short(d.get('then'))} {then}"


def _short(value: Any, limit: int = 160) -> str:
    """A value's repr, cut in the middle when long (the whole value is in llmload.json)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit // 2 - 2]} ... {text[-(limit // 2 - 3):]}"


def comparison_rows(doc: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): one row per cell compared."""
    cur, base, _, _ = _names(doc)
    headers = ["users", "prompt", f"E2E mean (s) {base} -> {cur}", *SHOWN_DELTAS[1:], "gates", "verdict"]
    rows = []
    for c in doc.get("cells") or []:
        deltas = {d["label"]: d for d in c.get("deltas") or []}
        first = c.get("users") if c.get("mode", "closed") == "closed" else f"{c.get('rate'):g}/s"
        rows.append([str(first), str(c.get("prompt_tokens")), _values_and_change(deltas.get("E2E mean")),
                     *(_change(deltas.get(label)) for label in SHOWN_DELTAS[1:]),
                     "\n".join(gate_text(g) for g in c.get("gates") or []), str(c.get("verdict"))])
    return headers, rows


def gate_text(g: dict[str, Any]) -> str:
    """'e2e_p50 0.61 0.58 0.66 -> 0.70 0.72 0.69: +14.2% [+8.1%, +20.6%] vs 10%: regression (why)'."""
    name, _, threshold = str(g.get("gate", "")).partition(":")
    metric = _metric_of(name)
    values = f"{_side(g.get('baseline'), metric)} -> {_side(g.get('current'), metric)}"
    change = g.get("change_pct")
    text = f"{name} {values}"
    if change is not None:
        text += f": {change:+.1f}%"
        if g.get("ci_low_pct") is not None:
            text += f" [{g['ci_low_pct']:+.1f}%, {g['ci_high_pct']:+.1f}%]"
        text += f" vs {threshold}"
    text += f": {g.get('verdict')}"
    return text + (f" ({g['reason']})" if g.get("reason") else "")


def _metric_of(gate_name: str) -> str:
    for metric in (gate_name, gate_name.rpartition("_")[0]):
        try:
            any_metric(metric)
            return metric
        except KeyError:
            continue
    return "e2e"


def _side(values: Any, metric: str) -> str:
    if not values:
        return "-"
    m = any_metric(metric)
    out = []
    for i, v in enumerate(values):
        if i and v.get("session", 0) != values[i - 1].get("session", 0):
            out.append("|")  # a baseline's sessions, oldest first
        text = "-" if v.get("value") is None else f"{v['value'] * m.scale:.3g}"
        out.append(text if v.get("used") else f"({text} {str(v.get('note', '')).split(':')[0]})")
    return " ".join(out)


def tail_lines(doc: dict[str, Any]) -> list[str]:
    """Run-level gates (the server start) and the cells measured on one side only."""
    cur, base, _, _ = _names(doc)
    lines = [f"server start: {gate_text(g)}" for g in doc.get("run_gates") or []]
    lines += [f"only in {cur} (not compared): {label}" for label in doc.get("only_current") or []]
    lines += [f"only in {base} (not measured in {cur}): {label}" for label in doc.get("only_baseline") or []]
    return lines


def _change(d: dict[str, Any] | None) -> str:
    """'+30.0%*' (signed change; * when worse)."""
    if d is None or d.get("change_pct") is None:
        return "-"
    worse = d["change_pct"] != 0 and ((d["change_pct"] < 0) == any_metric(d["metric"]).higher_is_better)
    return f"{d['change_pct']:+.1f}%{'*' if worse else ''}"


def _values_and_change(d: dict[str, Any] | None) -> str:
    """'1.9 -> 2.5 +30.0%*': the study's metric gets its values too."""
    if d is None or d.get("baseline") is None or d.get("current") is None:
        return "-"
    return f"{format_value(d['baseline'], d['metric'])} -> {format_value(d['current'], d['metric'])} {_change(d)}"


# ------------------------------------------------------------------------------- verdicts by gate

COUNTED = ("ok", "improved", "regression", "inconclusive", "invalid")  # as the summary lists them
PRECEDENCE = ("regression", "invalid", "inconclusive", "improved", "ok")  # the session's verdict: first found


def _doc(comparison: Comparison | dict[str, Any]) -> dict[str, Any]:
    return comparison.to_dict() if isinstance(comparison, Comparison) else comparison


def _gate_results(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for c in doc.get("cells") or [] for g in c.get("gates") or []] + list(doc.get("run_gates") or [])


def verdict_counts(comparison: Comparison | dict[str, Any]) -> dict[str, dict[str, int]]:
    """{gate: {verdict: count}} over the cells (and server starts) of one comparison, every gate of it
    listed, every kind of verdict counted (0 included), so that a gate that judged nothing shows."""
    doc = _doc(comparison)
    out = {str(g): dict.fromkeys(COUNTED, 0) for g in doc.get("gates") or []}
    for g in _gate_results(doc):
        counts = out.setdefault(str(g.get("gate")), dict.fromkeys(COUNTED, 0))
        verdict = str(g.get("verdict"))
        counts[verdict] = counts.get(verdict, 0) + 1
    return out


def _first(verdicts: Iterable[str]) -> str:
    seen = set(verdicts)
    return next((v for v in PRECEDENCE if v in seen), "none")


def overall_verdict(comparisons: Iterable[Comparison | dict[str, Any]]) -> str:
    """The session's verdict over every gate of every comparison: regression > invalid > inconclusive >
    improved > ok; 'none' when no gate judged any cell."""
    return _first(str(g.get("verdict")) for c in comparisons for g in _gate_results(_doc(c)))


def gate_verdicts(comparisons: Iterable[Comparison | dict[str, Any]]) -> dict[str, Any]:
    """What llmload.json carries for CI: {"verdict": overall, "gates": {gate: {"verdict", "counts"}}},
    each gate's counts summed over the comparisons (baseline, candidate) it was applied in."""
    docs = [_doc(c) for c in comparisons]
    gates: dict[str, dict[str, int]] = {}
    for doc in docs:
        for gate, counts in verdict_counts(doc).items():
            total = gates.setdefault(gate, dict.fromkeys(COUNTED, 0))
            for verdict, n in counts.items():
                total[verdict] = total.get(verdict, 0) + n
    return {"verdict": overall_verdict(docs),
            "gates": {gate: {"verdict": _first(v for v, n in counts.items() if n), "counts": counts}
                      for gate, counts in gates.items()}}


def render_verdict_counts(comparisons: Iterable[Comparison | dict[str, Any]]) -> str:
    """One line per comparison and gate: 'e2e_p95:10% (B (candidate) vs A): 0 ok, 0 improved, 0 regression,
    4 inconclusive, 0 invalid: judged nothing'; '' without gates."""
    lines = []
    for doc in map(_doc, comparisons):
        cur, base, _, _ = _names(doc)
        for gate, counts in verdict_counts(doc).items():
            text = ", ".join(f"{counts.get(v, 0)} {v}" for v in COUNTED)
            extra = sorted(set(counts) - set(COUNTED))
            text += "".join(f", {counts[v]} {v}" for v in extra)
            judged = sum(counts.get(v, 0) for v in ("ok", "improved", "regression"))
            note = ": judged nothing" if not judged else ""
            lines.append(f"{gate} ({cur} vs {base}): {text}{note}")
    return "\n".join(lines)


__all__ = ["COUNTED", "PRECEDENCE", "comparison_rows", "gate_text", "gate_verdicts", "head_lines", "overall_verdict",
           "render_comparison", "render_verdict_counts", "tail_lines", "verdict_counts"]
