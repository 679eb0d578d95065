"""How accurately does the client measure the server? Client numbers vs the fake server's own truth.

The fake server (pytest_llmload.testing.fakeserver, pinned to CPU 1) sends the first token 100 ms after it has
read a request, then one token every 20 ms, 100 tokens, and records for every request when it read it,
when it wrote each token and when it wrote [DONE] (time.perf_counter: CLOCK_MONOTONIC, the same clock
as this process). The client runs pinned to CPU 0. For 1, 128 and 1024 simultaneous users and for each
HTTP stack, the client's E2E / TTFT / ITL are compared with the server's, per request and in
distribution; then the client's maximum ingest rate (token events per second on its one core) is
measured with a server that sends every token at once.

    .venv/bin/python benchmarks/bench_accuracy.py            # writes benchmarks/results/accuracy.{json,md}
    .venv/bin/python benchmarks/bench_accuracy.py --quick    # 1 and 128 users only, no comparison stacks
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from pytest_llmload import metrics, vocabulary  # noqa: E402
from pytest_llmload.testing.fakeserver import prompt_key  # noqa: E402
from pytest_llmload.results import RequestRecord  # noqa: E402
from pytest_llmload.load.runner import LoadRunner  # noqa: E402
from common import free_port, http_json  # noqa: E402

MODEL = "fake-model"
TTFT_MS, ITL_MS, TOKENS, PROMPT_TOKENS = 100.0, 20.0, 100, 64
SERVER_CPU, CLIENT_CPU = 1, 0


# ---- the fake server in its own process -------------------------------------------------------------
def start_server(port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pytest_llmload.testing.fakeserver", "--port", str(port), "--ttft-ms", str(TTFT_MS),
           "--itl-ms", str(ITL_MS), "--cpu", str(SERVER_CPU), "--uvloop", "--max-model-len", "100000",
           "--duration-s", "1800"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fake server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fake server not ready in 30 s")


# ---- comparison -------------------------------------------------------------------------------------
def compare(records: Sequence[RequestRecord], prompts: Sequence[str], truth: list[dict[str, Any]],
            t0: float) -> dict[str, Any]:
    """Client vs server, per request (paired through the prompt) and in distribution.

    Both processes read CLOCK_MONOTONIC, so `t0 + record time` is comparable with the server's stamps.
    "wire" truth starts at the client's write (what a user waits for: it includes the time the server
    needs to accept and parse the request); "server" truth starts when the fake server had parsed the
    request, so it leaves out the fake server's own backlog of reading N requests on one core.
    The client's own error is what remains: token arrival (client) minus token write (server).
    """
    by_key = {t["key"]: t for t in truth}
    pairs = [(r, by_key[prompt_key(prompts[r.index])]) for r in records
             if r.ok and prompt_key(prompts[r.index]) in by_key]
    pairs = [(r, t) for r, t in pairs if t["sends"] and t["done"]]
    stats = metrics.cell_stats(records)
    ms = lambda xs: sorted(x * 1000 for x in xs)  # noqa: E731
    p = vocabulary.percentile
    lag_first = ms((t0 + r.first_token) - t["sends"][0] for r, t in pairs if r.first_token is not None)
    lag_end = ms((t0 + r.end) - t["done"] for r, t in pairs)
    lag_chunks = ms((t0 + c) - s for r, t in pairs if len(r.chunk_times) == len(t["sends"])
                    for c, s in zip(r.chunk_times, t["sends"]))
    backlog = ms(t["recv"] - (t0 + r.start) for r, t in pairs)
    wire_e2e = [t["done"] - (t0 + r.start) for r, t in pairs]
    wire_ttft = [t["sends"][0] - (t0 + r.start) for r, t in pairs]
    srv_e2e = [t["done"] - t["recv"] for _, t in pairs]
    srv_ttft = [t["sends"][0] - t["recv"] for _, t in pairs]
    srv_itl = [b - a for _, t in pairs for a, b in zip(t["sends"], t["sends"][1:])]
    out: dict[str, Any] = {"requests": len(records), "ok": stats.requests_ok, "matched": len(pairs),
                           "errors": stats.errors, "start_spread_ms": stats.start_spread_s * 1000}
    if not pairs or stats.e2e is None or stats.ttft is None or stats.itl is None:
        return out
    med = statistics.median
    out["client"] = {"e2e_p50_s": stats.e2e.p50, "ttft_p50_ms": stats.ttft.p50 * 1000,
                     "itl_mean_ms": stats.itl.mean * 1000, "chunks": stats.itl.count + len(pairs)}
    out["wire_truth"] = {"e2e_p50_s": med(wire_e2e), "ttft_p50_ms": med(wire_ttft) * 1000}
    out["server_truth"] = {"e2e_p50_s": med(srv_e2e), "ttft_p50_ms": med(srv_ttft) * 1000,
                           "itl_mean_ms": statistics.fmean(srv_itl) * 1000}
    out["delta"] = {
        "e2e_p50_pct": (stats.e2e.p50 / med(wire_e2e) - 1) * 100,
        "ttft_p50_ms": (stats.ttft.p50 - med(wire_ttft)) * 1000,
        "itl_mean_ms": (stats.itl.mean - statistics.fmean(srv_itl)) * 1000,
        "e2e_p50_pct_vs_server_view": (stats.e2e.p50 / med(srv_e2e) - 1) * 100,
        "ttft_p50_ms_vs_server_view": (stats.ttft.p50 - med(srv_ttft)) * 1000,
    }
    out["lag_ms"] = {  # client arrival minus server write, and server read minus client write
        "first_token_p50": p(lag_first, 50), "first_token_p99": p(lag_first, 99),
        "end_p50": p(lag_end, 50), "end_p99": p(lag_end, 99),
        "every_chunk_p50": p(lag_chunks, 50) if lag_chunks else None,
        "every_chunk_p99": p(lag_chunks, 99) if lag_chunks else None,
        "server_read_backlog_p50": p(backlog, 50), "server_read_backlog_max": backlog[-1],
    }
    return out


def verdict(res: dict[str, Any]) -> dict[str, bool]:
    d = res.get("delta") or {}
    if not d:
        return {"all": False}
    v = {"e2e_p50_within_2pct": abs(d["e2e_p50_pct"]) <= 2.0, "ttft_p50_within_5ms": abs(d["ttft_p50_ms"]) <= 5.0,
         "itl_mean_within_0.5ms": abs(d["itl_mean_ms"]) <= 0.5, "no_errors": res["ok"] == res["requests"]}
    if res["requests"] >= 1024:
        v["start_spread_under_50ms"] = res["start_spread_ms"] < 50.0
    v["all"] = all(v.values())
    return v


# ---- the stacks under test ----------------------------------------------------------------------------
def session_observers(base: str, server_pid: int) -> list[Any]:
    """The observers a session runs during every cell: GPU telemetry, /metrics (with its poller thread),
    the server processes' CPU; the runner's own self-check is always on."""
    from pytest_llmload.observe.gpu import GpuTelemetry
    from pytest_llmload.observe.processes import ProcessCpuObserver
    from pytest_llmload.observe.server_metrics import ServerMetricsObserver
    from pytest_llmload.server.placement import allowed_cpus

    return [GpuTelemetry(), ServerMetricsObserver(base), ProcessCpuObserver(lambda: [server_pid], allowed_cpus)]


LAST_CELL: dict[str, Any] = {}  # validity of the last llmload cell, for the report


def run_llmload(base: str, users: int, loop: str, max_tokens: int = TOKENS,
                observers: Sequence[Any] = ()) -> tuple[list[RequestRecord], list[str], float, float]:
    os.environ["LLMLOAD_EVENT_LOOP"] = loop
    with LoadRunner(base, MODEL, progress=False, request_timeout_s=120, observers=observers) as runner:
        # Prompts first (cached), so that only the cell is timed for CPU.
        factory = runner._run(runner._prompt_factory())  # noqa: SLF001 - the bench pairs by prompt
        prompts = [p.text for p in runner._run(factory.prompts(PROMPT_TOKENS, users))]  # noqa: SLF001
        http_json(base + "/fake/reset", {})
        cpu = time.process_time()
        cell = runner.run_cell_kw(users, PROMPT_TOKENS, max_tokens)
        cpu = time.process_time() - cpu
    for observer in observers:
        observer.close()
    LAST_CELL.update(valid=cell.valid, invalid_reasons=list(cell.invalid_reasons),
                     observed=sorted(k for k in cell.extra if k != "warnings"))
    assert runner.last_t0 is not None
    return list(cell.records), prompts, cpu, runner.last_t0


def run_candidate(base: str, users: int, which: str, max_tokens: int = TOKENS) -> tuple[list[RequestRecord], list[str], float, float]:
    import uvloop
    from candidates import run_aiohttp, run_httpx

    prompts = [f"{which} request {i} " + "lorem ipsum " * 20 for i in range(users)]
    http_json(base + "/fake/reset", {})
    fn: Callable[..., Any] = {"httpx": lambda: run_httpx(base, MODEL, prompts, max_tokens),
                              "httpx-plain": lambda: run_httpx(base, MODEL, prompts, max_tokens, tuned=False),
                              "aiohttp": lambda: run_aiohttp(base, MODEL, prompts, max_tokens)}[which]
    cpu = time.process_time()
    records, t0 = uvloop.run(fn())
    return records, prompts, time.process_time() - cpu, t0


def run_one(base: str, stack: str, users: int, max_tokens: int = TOKENS) -> tuple[list[RequestRecord], list[str], float, float]:
    LAST_CELL.clear()
    if stack == "llmload-observed":
        return run_llmload(base, users, "uvloop", max_tokens, session_observers(base, SERVER_PID[0]))
    if stack.startswith("llmload"):
        return run_llmload(base, users, "asyncio" if stack.endswith("asyncio") else "uvloop", max_tokens)
    return run_candidate(base, users, stack, max_tokens)


def ingest(base: str, stack: str, users: int, tokens: int) -> dict[str, Any]:
    """Token events per second the client absorbs when the server sends everything at once."""
    http_json(base + "/fake/config", {"itl_ms": 0, "ttft_ms": 50, "record_truth": False})
    try:
        records, _, cpu, _ = run_one(base, stack, users, tokens)
    finally:
        http_json(base + "/fake/config", {"itl_ms": ITL_MS, "ttft_ms": TTFT_MS, "record_truth": True})
    ok = [r for r in records if r.ok]
    events = sum(len(r.chunk_times) for r in ok)
    span = max(r.end for r in ok) - min(r.first_token for r in ok if r.first_token is not None) if ok else 0
    return {"stack": stack, "users": users, "tokens": tokens, "ok": len(ok), "events": events,
            "span_s": span, "events_per_s": events / span if span else 0, "cpu_s": cpu,
            "cpu_us_per_event": cpu / events * 1e6 if events else None}


SERVER_PID = [0]


def machine() -> dict[str, Any]:
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), platform.processor())
    import uvloop

    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": model,
            "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "uvloop": uvloop.__version__, "client_cpu": CLIENT_CPU, "server_cpu": SERVER_CPU,
            "loadavg_at_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--observed-only", action="store_true", help="our client with and without the session's observers")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    os.sched_setaffinity(0, {CLIENT_CPU})
    port = free_port()
    proc = start_server(port)
    SERVER_PID[0] = proc.pid
    base = f"http://127.0.0.1:{port}"
    stacks = (["llmload-uvloop", "llmload-observed"] if a.quick or a.observed_only else
              ["llmload-uvloop", "llmload-observed", "llmload-asyncio", "aiohttp", "httpx"])
    sizes = [1, 128] if a.quick else [1, 128, 1024]
    report: dict[str, Any] = {"machine": machine(), "server": {"ttft_ms": TTFT_MS, "itl_ms": ITL_MS,
                              "tokens": TOKENS, "prompt_tokens": PROMPT_TOKENS}, "accuracy": [], "ingest": []}
    try:
        for users in sizes:
            for stack in stacks + (["httpx-plain"] if users == 1024 else []):
                records, prompts, cpu, t0 = run_one(base, stack, users)
                res = compare(records, prompts, http_json(base + "/fake/truth"), t0)
                res.update(stack=stack, users=users, client_cpu_s=cpu, **LAST_CELL)
                res["verdict"] = verdict(res)
                report["accuracy"].append(res)
                print(json.dumps({k: res[k] for k in ("stack", "users", "ok", "start_spread_ms", "delta", "lag_ms", "verdict")
                                  if k in res}), flush=True)
        for stack in stacks:
            r = ingest(base, stack, 64 if a.quick else 128, 1000)
            report["ingest"].append(r)
            print(json.dumps(r), flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "accuracy-quick" if a.quick else "accuracy"
    (out / f"{name}.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{name}.md").write_text(markdown(report))
    print(f"wrote {out / name}.json and .md")


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    lines = [f"# Client accuracy vs fake-server truth ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, uvloop {m['uvloop']}; client on "
             f"CPU {m['client_cpu']}, fake server on CPU {m['server_cpu']}; load average at start "
             f"{m['loadavg_at_start'][0]:.2f}, at end {m['loadavg_at_end'][0]:.2f}.",
             f"Server: TTFT {rep['server']['ttft_ms']:g} ms, ITL {rep['server']['itl_ms']:g} ms, "
             f"{rep['server']['tokens']} tokens.", "",
             "Truth (\"wire\"): from the client's write to the server's write of the first token / of [DONE]; "
             "ITL truth: the gaps between the server's writes. Lag: client arrival minus server write "
             "(the client's own error). Backlog: server read minus client write (the fake server's time to "
             "accept and parse N requests on one core; a real user waits for it too).", "",
             "| stack | users | ok | start spread ms | E2E p50 client / truth s | ΔE2E p50 % | ΔTTFT p50 ms "
             "| ΔITL mean ms | lag first token p50/p99 ms | lag [DONE] p50/p99 ms | lag all chunks p50/p99 ms "
             "| server backlog p50/max ms | client CPU s | targets | cell valid |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["accuracy"]:
        d, lag = r.get("delta") or {}, r.get("lag_ms") or {}
        f = (lambda src, k, fmt="{:.2f}": "-" if src.get(k) is None else fmt.format(src[k]))  # noqa: E731
        e2e = (f"{r['client']['e2e_p50_s']:.4f} / {r['wire_truth']['e2e_p50_s']:.4f}" if "client" in r else "-")
        miss = [k for k, v in r["verdict"].items() if not v and k != "all"] or [f"errors {r['errors']}"]
        lines.append(
            f"| {r['stack']} | {r['users']} | {r['ok']}/{r['requests']} | {r['start_spread_ms']:.1f} | {e2e} | "
            f"{f(d, 'e2e_p50_pct')} | {f(d, 'ttft_p50_ms')} | {f(d, 'itl_mean_ms', '{:.3f}')} | "
            f"{f(lag, 'first_token_p50')} / {f(lag, 'first_token_p99')} | {f(lag, 'end_p50')} / {f(lag, 'end_p99')} | "
            f"{f(lag, 'every_chunk_p50')} / {f(lag, 'every_chunk_p99')} | "
            f"{f(lag, 'server_read_backlog_p50')} / {f(lag, 'server_read_backlog_max')} | {r['client_cpu_s']:.2f} | "
            f"{'met' if r['verdict'].get('all') else 'MISSED: ' + ', '.join(miss)} | {_validity(r)} |")
    lines += ["", "Ingest (server sends all tokens at once; one client core):", "",
              "| stack | users x tokens | events | events/s | client CPU µs/event |", "|---|---|---|---|---|"]
    for r in rep["ingest"]:
        cpu = f"{r['cpu_us_per_event']:.1f}" if r["cpu_us_per_event"] else "-"
        lines.append(f"| {r['stack']} | {r['users']} x {r['tokens']} | {r['events']} | {r['events_per_s']:,.0f} | {cpu} |")
    return "\n".join(lines) + "\n"


def _validity(r: dict[str, Any]) -> str:
    if "valid" not in r:
        return "-"
    return "yes" if r["valid"] else "NO: " + "; ".join(r["invalid_reasons"]).replace("|", "/")


if __name__ == "__main__":
    main()
