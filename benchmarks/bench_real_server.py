"""Proof on the path users run: the real vLLM (CPU build) on the tiny model, as the plugin ships it.

(a) The study's matrix (users 1..128 x prompts 31..822; 2193 does not fit the tiny model's context)
    measured by `LoadSession` with the default settings, i.e. exactly what `pytest suites/` does: the
    placement, every observer on. Per cell: valid or not (and why), and the client's E2E and TTFT means
    beside vLLM's own histogram means over the same requests (the `/metrics` deltas of the cell).
    Targets: no invalid cell on an idle machine; E2E means within 3 % of vLLM's.
(b) Side by side on the same server, same cells (1, 8, 32, 64 users x 31 tokens, 100 output tokens):
    this client and `vllm bench serve` (random dataset, `--max-concurrency` = users, `--ignore-eos`),
    each held against the same histograms (a /metrics scrape before and after each run). `vllm bench
    serve` runs with this process's CPU placement (the client's core).

    .venv/bin/python benchmarks/bench_real_server.py            # ~6-8 min on 2 cores
    .venv/bin/python benchmarks/bench_real_server.py --quick    # (b) only, and 2 matrix cells

Writes results/real_server.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import write_results  # noqa: E402
from pytest_llmload.control import Control  # noqa: E402
from pytest_llmload.observe.server_metrics import HISTOGRAMS, histogram, parse_prometheus  # noqa: E402
from pytest_llmload.options import Settings  # noqa: E402
from pytest_llmload.results import CellResult  # noqa: E402
from pytest_llmload.session import LoadSession  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
STUDY_USERS = (1, 2, 4, 8, 16, 32, 64, 128)
STUDY_PROMPTS = (31, 63, 119, 296, 480, 822)  # 2193 exceeds the tiny model's 2048-token context


def server_means(cell: CellResult) -> tuple[float | None, float | None]:
    hists = (cell.extra.get("server_metrics") or {}).get("histograms") or {}
    return (hists.get("e2e_s") or {}).get("mean"), (hists.get("ttft_s") or {}).get("mean")


def cell_row(cell: CellResult) -> dict[str, Any]:
    e2e_server, ttft_server = server_means(cell)
    e2e = cell.stats.e2e.mean if cell.stats and cell.stats.e2e else None
    ttft = cell.stats.ttft.mean if cell.stats and cell.stats.ttft else None
    client = cell.extra.get("client") or {}
    return {"users": cell.users, "prompt_tokens": cell.prompt_tokens, "ok": cell.ok, "valid": cell.valid,
            "invalid_reasons": list(cell.invalid_reasons), "e2e_client_s": e2e, "e2e_server_s": e2e_server,
            "e2e_diff_pct": None if not (e2e and e2e_server) else 100 * (e2e / e2e_server - 1),
            "ttft_client_s": ttft, "ttft_server_s": ttft_server,
            "start_spread_ms": client.get("start_spread_s", 0) * 1e3,
            "max_loop_lag_ms": client.get("max_loop_lag_s", 0) * 1e3}


def matrix_part(session: LoadSession, users: tuple[int, ...], prompts: tuple[int, ...]) -> list[dict[str, Any]]:
    session.warm_up()
    return [cell_row(session.run_cell(u, p)) for p in prompts for u in users]


def scrape_e2e(control: Control) -> tuple[Any, Any]:
    page = parse_prometheus(control.get("/metrics").text)
    return histogram(page, HISTOGRAMS["e2e_s"]), histogram(page, HISTOGRAMS["ttft_s"])


def bench_serve(session: LoadSession, users: int, tokens: int, out_dir: Path) -> dict[str, Any]:
    """One `vllm bench serve` run of `users` requests at once; its means and the server's over the run."""
    server = session.server
    assert server is not None and session.a.model_choice is not None
    name = f"bench-{users}.json"
    cmd = [sys.executable, "-m", "vllm.entrypoints.cli.main", "bench", "serve", "--backend", "openai",
           "--base-url", server.base_url, "--model", server.model, "--tokenizer", session.a.model_choice.model,
           "--dataset-name", "random", "--random-input-len", str(tokens), "--random-output-len", "100",
           "--num-prompts", str(users), "--max-concurrency", str(users), "--ignore-eos", "--disable-tqdm",
           "--percentile-metrics", "ttft,tpot,itl,e2el",
           "--save-result", "--result-dir", str(out_dir), "--result-filename", name, "--seed", str(users)]
    with Control(server.base_url) as control:
        before = scrape_e2e(control)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"})
        time.sleep(1.0)  # vLLM records a request's stats just after it finished streaming it
        after = scrape_e2e(control)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    result = json.loads((out_dir / name).read_text())
    return {"e2e_client_s": result["mean_e2el_ms"] / 1e3, "ttft_client_s": result["mean_ttft_ms"] / 1e3,
            "e2e_server_s": (after[0] - before[0]).mean, "ttft_server_s": (after[1] - before[1]).mean,
            "completed": result.get("completed")}


def side_by_side(session: LoadSession, users: tuple[int, ...], tokens: int) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for u in users:
            ours = cell_row(session.run_cell(u, tokens))
            theirs = bench_serve(session, u, tokens, Path(tmp))
            rows.append({"users": u, "prompt_tokens": tokens, "llmload": ours, "vllm_bench_serve": theirs})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def pct(client: float | None, server: float | None) -> str:
    return "-" if not client or not server else f"{100 * (client / server - 1):+.1f} %"


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    lines = [f"# The real vLLM on the CPU, as shipped ({doc['date']})", "",
             f"Machine: {doc['machine']}; load average at start {doc['load_start']}, at end {doc['load_end']}. "
             f"vLLM {doc['vllm_version']}, tiny model, 100 output tokens. Placement: {doc['placement']}.", ""]
    if doc["matrix"]:
        cells = [c for c in doc["matrix"] if c["ok"]]
        valid = [c for c in cells if c["valid"]]
        diffs = [abs(c["e2e_diff_pct"]) for c in valid if c["e2e_diff_pct"] is not None]
        lines += ["## (a) The study's matrix through LoadSession (what `pytest suites/` runs)", "",
                  f"{len(cells)} cells measured, **{len(cells) - len(valid)} invalid**. Valid cells: client E2E mean vs "
                  f"vLLM's histogram mean, abs difference median {statistics.median(diffs):.2f} %, "
                  f"max {max(diffs):.2f} %, {sum(d <= 3 for d in diffs)} of {len(diffs)} within 3 %.", "",
                  "| users | prompt | valid | E2E client / vLLM s | diff | TTFT client / vLLM ms | spread ms | loop stall ms | why invalid |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in cells:
            ttft = "-" if c["ttft_server_s"] is None else f"{c['ttft_client_s'] * 1e3:.0f} / {c['ttft_server_s'] * 1e3:.0f}"
            e2e = "-" if c["e2e_server_s"] is None else f"{c['e2e_client_s']:.3f} / {c['e2e_server_s']:.3f}"
            lines.append(f"| {c['users']} | {c['prompt_tokens']} | {'yes' if c['valid'] else 'NO'} | {e2e} | "
                         f"{pct(c['e2e_client_s'], c['e2e_server_s'])} | {ttft} | {c['start_spread_ms']:.1f} | "
                         f"{c['max_loop_lag_ms']:.0f} | {'; '.join(c['invalid_reasons']).replace('|', '/')} |")
    lines += ["", "## (b) Same server, same cells: this client vs `vllm bench serve`", "",
              "Each against vLLM's own E2E / TTFT histogram means over the same requests.", "",
              "| users x 31 tokens | vLLM E2E mean (s) | llmload | diff | vllm bench serve | diff | vLLM TTFT (ms) | llmload | bench serve |",
              "|---|---|---|---|---|---|---|---|---|"]
    for row in doc["side_by_side"]:
        ours, theirs = row["llmload"], row["vllm_bench_serve"]
        if "error" in theirs:
            lines.append(f"| {row['users']} | {ours['e2e_server_s']:.3f} | {ours['e2e_client_s']:.3f} | "
                         f"{pct(ours['e2e_client_s'], ours['e2e_server_s'])} | failed | | | | |")
            continue
        lines.append(
            f"| {row['users']} | {ours['e2e_server_s']:.3f} / {theirs['e2e_server_s']:.3f} | {ours['e2e_client_s']:.3f} | "
            f"{pct(ours['e2e_client_s'], ours['e2e_server_s'])} | {theirs['e2e_client_s']:.3f} | "
            f"{pct(theirs['e2e_client_s'], theirs['e2e_server_s'])} | "
            f"{ours['ttft_server_s'] * 1e3:.0f} / {theirs['ttft_server_s'] * 1e3:.0f} | {ours['ttft_client_s'] * 1e3:.0f} | "
            f"{theirs['ttft_client_s'] * 1e3:.0f} |")
    lines += ["", "(vLLM's means: over this client's cell / over the bench run; each tool is held against the "
              "server's account of its own requests.)"]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "real_server"))
    args = parser.parse_args()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as reports:
        with LoadSession(Settings(report_dir=reports)) as session:
            server = session.start_server()
            users, prompts = ((8, 32), (31,)) if args.quick else (STUDY_USERS, STUDY_PROMPTS)
            matrix = matrix_part(session, users, prompts)
            print(f"matrix: {sum(not c['valid'] for c in matrix)} invalid of {len(matrix)}", flush=True)
            pairs = side_by_side(session, (1, 8, 32, 64), 31)
            doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                              f"Python {platform.python_version()}",
                   "vllm_version": server.version(), "placement": session.run.environment.get("placement", {}).get("note"),
                   "load_start": [round(x, 2) for x in load_start], "load_end": [round(x, 2) for x in os.getloadavg()],
                   "matrix": matrix, "side_by_side": pairs}
    write_results(doc, args.out, write_markdown)


if __name__ == "__main__":
    main()
