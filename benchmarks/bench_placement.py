"""Which placement of client and server keeps the measurements truthful on a small CPU machine?

For each candidate placement the benchmark starts the real vLLM (CPU build) on the tiny model, places
the server's process tree and this process (the measuring client) as the candidate says, warms up, and
measures a matrix (default: 1, 8, 32, 64 users x 31, 296, 822 prompt tokens, 100 output tokens), with
the session's observers (server /metrics cross-check, per-process CPU). Per cell it records whether
the cell is valid and why not, the start spread, the client's longest loop stall and run-queue wait,
and the client's E2E / TTFT means beside vLLM's own histogram means.

    .venv/bin/python benchmarks/bench_placement.py                 # every candidate, 2 rounds (~10 min)
    .venv/bin/python benchmarks/bench_placement.py --rounds 1 --candidates isolated,unpinned

Writes results/placement.{json,md}. Candidates on a 2-core machine (cores 0 and 1):
    isolated   the default: server tree on core 0 (OpenMP bound there), client alone on core 1
    frontend   OpenMP on core 0, engine core and API server free on both cores, client on core 1
    frontend-niced  the same, with the server's tree at niceness +10 (the client wins core 1)
    unpinned   vLLM's own automatic binding, the client wherever the OS puts it (the old behaviour)
On a larger machine the same names apply (isolated: client on the last core, server on the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results  # noqa: E402
from pytest_llmload.load.runner import LoadRunner  # noqa: E402
from pytest_llmload.observe.processes import ProcessCpuObserver  # noqa: E402
from pytest_llmload.observe.server_metrics import ServerMetricsObserver  # noqa: E402
from pytest_llmload.results import CellResult, CellSpec  # noqa: E402
from pytest_llmload.server.launch import VLLMServer  # noqa: E402
from pytest_llmload.server.placement import (  # noqa: E402
    Placement,
    allowed_cpus,
    check_placement,
    format_cpu_list,
    plan_cpu_placement,
    set_own_affinity,
)
from pytest_llmload.server.presets import resolve_model  # noqa: E402
from pytest_llmload.server.spec import ServerSpec  # noqa: E402
from pytest_llmload.server.tiny import default_cache_dir  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def candidates(cores: tuple[int, ...]) -> dict[str, Placement]:
    isolated = plan_cpu_placement(cores)
    return {
        "isolated": isolated,
        "frontend": Placement(isolated.client_cpus, cores, isolated.omp_cpus, "frontend",
                              "OpenMP on the server cores; engine core and API server free to share the client's"),
        "unpinned": Placement(cores, (), (), "unpinned", "vLLM's automatic binding; the client not pinned"),
        "frontend-niced": Placement(isolated.client_cpus, cores, isolated.omp_cpus, "frontend-niced",
                                    "as frontend, with the server tree at niceness +10: the client wins the "
                                    "core it shares with the engine core and API server", server_nice=10),
    }


def run_candidate(name: str, placement: Placement, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    choice = resolve_model("tiny", default_cache_dir())
    spec = ServerSpec(model=choice.model, served_model_name="tiny", device="cpu", cpus=placement.server_cpus,
                      nice=placement.server_nice, env=placement.server_env(), log_dir=log_dir / name,
                      startup_timeout_s=600)
    original = allowed_cpus()
    with VLLMServer(spec) as server:
        set_own_affinity(placement.client_cpus)
        try:
            report = check_placement(placement, server.tree_pids())
            observers = [ServerMetricsObserver(server.base_url),
                         ProcessCpuObserver(server.tree_pids, allowed_cpus)]
            with LoadRunner(server.base_url, server.model, observers=observers, progress=False,
                            server_status=server.returncode, tokenizer_path=choice.model) as runner:
                runner.run_cell(CellSpec(users=1, prompt_tokens=31, max_tokens=8))  # warm-up, not recorded
                cells = [runner.run_cell(CellSpec(users=u, prompt_tokens=p, max_tokens=args.max_tokens))
                         for p in args.prompt_tokens for u in args.users]
            for observer in observers:
                observer.close()
        finally:
            set_own_affinity(original)
        return {"candidate": name, "placement": report.to_dict(), "startup_s": server.startup_s,
                "cells": [cell_row(c) for c in cells]}


def cell_row(cell: CellResult) -> dict[str, Any]:
    hists = (cell.extra.get("server_metrics") or {}).get("histograms") or {}
    client = cell.extra.get("client") or {}
    stats = cell.stats
    e2e = stats.e2e.mean if stats and stats.e2e else None
    ttft = stats.ttft.mean if stats and stats.ttft else None
    server_e2e = (hists.get("e2e_s") or {}).get("mean")
    server_ttft = (hists.get("ttft_s") or {}).get("mean")
    return {
        "users": cell.users, "prompt_tokens": cell.prompt_tokens, "ok": cell.ok, "valid": cell.valid,
        "invalid_reasons": list(cell.invalid_reasons),
        "start_spread_ms": client.get("start_spread_s", 0) * 1e3,
        "max_loop_lag_ms": client.get("max_loop_lag_s", 0) * 1e3,
        "runqueue_wait_ms": (client.get("runqueue_wait_s") or 0) * 1e3, "client_busy": client.get("busy"),
        "e2e_client_s": e2e, "e2e_server_s": server_e2e,
        "e2e_diff_pct": None if not (e2e and server_e2e) else 100 * (e2e / server_e2e - 1),
        "ttft_client_ms": None if ttft is None else ttft * 1e3,
        "ttft_server_ms": None if server_ttft is None else server_ttft * 1e3,
        "total_tokens_per_s": stats.total_tokens_per_s if stats else None,
        "processes": (cell.extra.get("processes") or {}).get("processes"),
    }


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run["candidate"], []).append(run)
    out = []
    for name, group in by_name.items():
        cells = [c for r in group for c in r["cells"] if c["ok"]]
        valid = [c for c in cells if c["valid"]]
        diffs = [abs(c["e2e_diff_pct"]) for c in valid if c["e2e_diff_pct"] is not None]
        out.append({
            "candidate": name, "cells": len(cells), "invalid": len(cells) - len(valid),
            "staggered": sum(1 for c in cells if any("start together" in r for r in c["invalid_reasons"])),
            "stalled": sum(1 for c in cells if any("stalled" in r for r in c["invalid_reasons"])),
            "e2e_diff_pct_median_valid": statistics.median(diffs) if diffs else None,
            "e2e_diff_pct_max_valid": max(diffs) if diffs else None,
            "tokens_per_s_median": statistics.median(c["total_tokens_per_s"] for c in cells) if cells else None,
            "startup_s": [r["startup_s"] for r in group],
        })
    return out


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    lines = [f"# Placement of client and server on the CPU ({doc['date']})", "",
             f"Machine: {doc['machine']}; cores {doc['cores']}; load average at start {doc['load_start']}, "
             f"at end {doc['load_end']}. Matrix: users {doc['users']} x prompt tokens {doc['prompt_tokens']}, "
             f"{doc['max_tokens']} output tokens, {doc['rounds']} round(s) per candidate.", "",
             "| candidate | cells | invalid | staggered | stalled | valid cells: abs(E2E client/server - 1) median / max | total tok/s median |",
             "|---|---|---|---|---|---|---|"]
    for s in doc["summary"]:
        med = "-" if s["e2e_diff_pct_median_valid"] is None else f"{s['e2e_diff_pct_median_valid']:.1f} % / {s['e2e_diff_pct_max_valid']:.1f} %"
        tps = "-" if s["tokens_per_s_median"] is None else f"{s['tokens_per_s_median']:.0f}"
        lines.append(f"| {s['candidate']} | {s['cells']} | {s['invalid']} | {s['staggered']} | {s['stalled']} | {med} | {tps} |")
    lines += ["", "Per cell (every round):", "",
              "| candidate | users | prompt | valid | spread ms | loop stall ms | run-queue wait ms | E2E client / server s | TTFT client / server ms | why invalid |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for run in doc["runs"]:
        for c in run["cells"]:
            e2e = "-" if c["e2e_server_s"] is None or c["e2e_client_s"] is None else f"{c['e2e_client_s']:.3f} / {c['e2e_server_s']:.3f}"
            ttft = "-" if c["ttft_server_ms"] is None or c["ttft_client_ms"] is None else f"{c['ttft_client_ms']:.0f} / {c['ttft_server_ms']:.0f}"
            why = "; ".join(c["invalid_reasons"]).replace("|", "/")
            lines.append(f"| {run['candidate']} | {c['users']} | {c['prompt_tokens']} | {'yes' if c['valid'] else 'NO'} | "
                         f"{c['start_spread_ms']:.1f} | {c['max_loop_lag_ms']:.1f} | {c['runqueue_wait_ms']:.0f} | {e2e} | {ttft} | {why} |")
    lines += ["", "Placements as /proc showed them:", ""]
    for run in doc["runs"]:
        p = run["placement"]
        procs = ", ".join(f"{x['name']}:{x['cpus']}" for x in p["server_processes"])
        lines.append(f"- {run['candidate']}: client {p['client']['cpus'] if p['client'] else '?'}; server {procs}; "
                     f"OpenMP {p['omp_threads_bind']}; problems: {p['problems'] or 'none'}")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", default="isolated,frontend,unpinned")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--users", default="1,8,32,64")
    parser.add_argument("--prompt-tokens", default="31,296,822")
    parser.add_argument("--max-tokens", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS / "placement"))
    args = parser.parse_args()
    args.users = [int(u) for u in args.users.split(",")]
    args.prompt_tokens = [int(p) for p in args.prompt_tokens.split(",")]
    cores = allowed_cpus()
    table = candidates(cores)
    names = [n for n in args.candidates.split(",") if n]
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "llmload-bench-placement"
    load_start = os.getloadavg()
    runs = []
    for rnd in range(args.rounds):
        for name in (names if rnd % 2 == 0 else list(reversed(names))):  # alternate the order: drift cancels
            print(f"round {rnd + 1}: {name} ...", flush=True)
            runs.append(run_candidate(name, table[name], args, log_dir))
            print(json.dumps(summarise([runs[-1]])[0]), flush=True)
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": f"{platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} cores, Python {platform.python_version()}", "cores": format_cpu_list(cores),
           "load_start": [round(x, 2) for x in load_start], "load_end": [round(x, 2) for x in os.getloadavg()],
           "users": args.users, "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
           "rounds": args.rounds, "summary": summarise(runs), "runs": runs}
    write_results(doc, args.out, write_markdown)


if __name__ == "__main__":
    main()
