"""The regression gate on the real vLLM CPU default (tiny model), as a user runs it: eight pytest sessions.

    1. save a baseline in three sessions (8 and 32 users x 63 tokens, 100 tokens, --llm-repeats 3)
    2. a later session of the same server compared against it   -> expected: no regression
    3. a later session started with --max-num-seqs=4 against it  -> expected: regression at 32 users
    4. A/B in one session, candidate --max-num-seqs=4            -> expected: regression at 32 users
    5. A/B in one session, candidate --max-num-seqs=256          -> expected: no regression (+ start-up gate)
    6. the baseline with its 32-user repeats marked invalid       -> expected: verdict "invalid", no reference

Run it alone on the machine (it starts vLLM):

    flock /tmp/llmload-vllm.lock python benchmarks/gate_real_vllm.py --out benchmarks/results   # ~9 min

Writes gate-real-vllm.json (every verdict with its per-repeat values and the server starts) and
gate-real-vllm.md (the terminal's comparison tables) into --out.

The runner marks cells it cannot vouch for (issue 12). Runs made before those checks existed were
re-judged offline with issue 12's start-spread rule applied to both sides (spread above max(50 ms, 5 % of
the cell's E2E p50) -> invalid); the driver still does so, labelled, which with the checks in place only
changes a verdict where the runner's own checks let a staggered cell through.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TEST = """
def test_matrix(llm_matrix):
    for cell in llm_matrix.cells():
        assert cell.ok, cell.error
"""
CELLS = ["--llm-users=8,32", "--llm-prompt-tokens=63", "--llm-max-tokens=100"]
GATES = ["--llm-compare-fail=e2e_p50:10%", "--llm-compare-fail=ttft_p50:10%"]
INVALID_REASON = "marked invalid for this check (the issue's artefact: start spread 1.67 s)"

SESSIONS: list[tuple[str, list[str], str]] = [
    ("1a-save-baseline", ["--llm-save-baseline=base.json"], "a baseline of 1 session"),
    ("1b-save-baseline", ["--llm-save-baseline=base.json"], "2 sessions"),
    ("1c-save-baseline", ["--llm-save-baseline=base.json"], "3 sessions"),
    ("2-same-server-later", ["--llm-baseline=base.json", *GATES], "no regression"),
    ("3-max-num-seqs-4-later", ["--llm-server-arg=--max-num-seqs=4", "--llm-baseline=base.json", *GATES],
     "regression at 32 users"),
    ("4-ab-max-num-seqs-4", ["--llm-candidate-server-arg=--max-num-seqs=4", *GATES], "regression at 32 users"),
    ("5-ab-max-num-seqs-256", ["--llm-candidate-server-arg=--max-num-seqs=256", *GATES,
                               "--llm-compare-fail=startup:50%"], "no regression"),
    ("6-invalid-baseline-cell", ["--llm-baseline=base-invalid.json", *GATES], "32 users: invalid"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gate-real-"))
    (work / "test_gate.py").write_text(TEST)
    results = []
    for name, extra, expected in SESSIONS:
        if name.startswith("6-"):
            _mark_invalid(work / "base.json", work / "base-invalid.json", users=32)
        results.append(_session(work, name, extra, expected))
        print(f"{name}: exit {results[-1]['exit']} in {results[-1]['wall_s']:.0f} s", flush=True)
    for r in results:
        r["with_start_spread_rule"] = _rejudge(work, r)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gate-real-vllm.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "gate-real-vllm.md").write_text(_markdown(results))
    return 0


def _session(work: Path, name: str, extra: list[str], expected: str) -> dict[str, Any]:
    report = work / name
    cmd = [sys.executable, "-m", "pytest", "test_gate.py", "-p", "no:cacheprovider", "-q",
           f"--llm-report-dir={report}", *CELLS, *extra]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1800, env=dict(os.environ))
    doc = json.loads((report / "llmload.json").read_text())
    summary = _summary(proc.stdout.splitlines())
    return {"session": name, "args": extra, "expected": expected, "exit": proc.returncode,
            "wall_s": time.monotonic() - started, "server_starts": doc.get("extra", {}).get("server_starts"),
            "cells": [_cell(c) for c in doc["cells"]], "comparisons": doc.get("extra", {}).get("comparisons", []),
            "terminal": summary}


def _summary(lines: list[str]) -> list[str]:
    """The terminal summary from the first comparison (or the report line) to pytest-benchmark's table."""
    starts = [i for i, line in enumerate(lines) if line.startswith(("Comparison of", "pytest-llmload reports"))]
    out = []
    for line in lines[starts[0] if starts else len(lines):]:
        if "benchmark 'llmload e2e'" in line or line.startswith("===="):
            break
        out.append(line)
    return out


def _cell(c: dict[str, Any]) -> dict[str, Any]:
    stats = c.get("stats") or {}
    return {"users": c["users"], "ok": c["ok"], "valid": c.get("valid"), "invalid_reasons": c.get("invalid_reasons"),
            "e2e_p50_s": (stats.get("e2e_s") or {}).get("p50"), "ttft_p50_s": (stats.get("ttft_s") or {}).get("p50"),
            "start_spread_s": stats.get("start_spread_s")}


def _spread_rule(run: Any) -> Any:
    """Issue 12's start-spread rule as a stand-in for the runner's validity checks (both sides)."""
    import dataclasses

    cells = []
    for c in run.cells:
        p50 = c.value("e2e", "p50") if c.ok else None
        spread = c.stats.start_spread_s if c.stats else 0.0
        if c.valid and p50 is not None and spread > max(0.05, 0.05 * p50):
            c = dataclasses.replace(c, valid=False, invalid_reasons=(f"start spread {spread:.2f} s (issue 12's rule, "
                                                                    "applied offline by the driver)",))
        cells.append(c)
    return dataclasses.replace(run, cells=cells)


def _rejudge(work: Path, r: dict[str, Any]) -> list[dict[str, Any]]:
    """The session's comparison again, with the start-spread rule applied: per cell and gate, the verdict."""
    from pytest_llmload.gate.compare import compare
    from pytest_llmload.report.json_report import read_report
    from pytest_llmload.vocabulary import parse_gate

    gates = [parse_gate(a.split("=", 1)[1]) for a in r["args"] if a.startswith("--llm-compare-fail=")]
    report = work / r["session"]
    baseline = next((a.split("=", 1)[1] for a in r["args"] if a.startswith("--llm-baseline=")), None)
    if baseline is not None:
        pair = (read_report(report), read_report(work / baseline), "baseline")
    elif (report / "candidate").is_dir():
        pair = (read_report(report / "candidate"), read_report(report), "candidate")
    else:
        return []
    result = compare(_spread_rule(pair[0]), _spread_rule(pair[1]), gates, kind=pair[2])
    return [{"users": c.cell.users, "gate": str(g.gate), "verdict": g.verdict, "change_pct": g.change_pct,
             "interval_pct": [g.ci_low_pct, g.ci_high_pct], "reason": g.reason} for c in result.cells for g in c.gates]


def _mark_invalid(src: Path, dst: Path, users: int) -> None:
    """What the validity checks write for an artefact cell, applied to every repeat of one cell."""
    doc = json.loads(src.read_text())
    for cell in doc["cells"]:
        if cell["users"] == users:
            cell["valid"], cell["invalid_reasons"] = False, [INVALID_REASON]
    dst.write_text(json.dumps(doc))


def _markdown(results: list[dict[str, Any]]) -> str:
    out = ["# The regression gate on the real vLLM CPU default", "",
           "`benchmarks/gate_real_vllm.py`: tiny model, 8 and 32 users x 63 prompt tokens, 100 output tokens, "
           "3 repeats, gates `e2e_p50:10%` and `ttft_p50:10%`. Per-repeat values are E2E p50 in s and TTFT p50 "
           "in ms, baseline (or A) -> current (or B).", ""]
    for r in results:
        out += [f"## {r['session']} (expected: {r['expected']}; exit status {r['exit']}, {r['wall_s']:.0f} s)", "",
                f"`{' '.join(r['args'])}`", ""]
        starts = r.get("server_starts") or []
        if starts:
            out += ["server starts: " + ", ".join(f"ready {s.get('startup_s', 0):.1f} s / first TTFT "
                                                  f"{1000 * (s.get('first_ttft_s') or 0):.0f} ms" for s in starts), ""]
        invalid = [c for c in r["cells"] if c.get("valid") is False]
        out += [f"cells of the session's own server marked invalid by the runner: {len(invalid)} of {len(r['cells'])}"
                + "".join(f"; {c['users']} users: {', '.join(c.get('invalid_reasons') or [])}" for c in invalid), ""]
        out += ["```", *r["terminal"], "```", ""]
        rejudged = r.get("with_start_spread_rule") or []
        if rejudged:
            out += ["With issue 12's start-spread rule applied to both sides (a stand-in for the runner's validity "
                    "checks, applied offline):", ""]
            out += [f"- {v['users']} users, {v['gate']}: **{v['verdict']}**"
                    + (f" {v['change_pct']:+.1f} %" if v["change_pct"] is not None else "")
                    + (f" [{v['interval_pct'][0]:+.1f} %, {v['interval_pct'][1]:+.1f} %]"
                       if v["interval_pct"][0] is not None else "")
                    + (f" ({v['reason']})" if v["reason"] else "") for v in rejudged]
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
