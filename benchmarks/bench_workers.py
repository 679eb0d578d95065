"""Load workers on many cores (and Ray actors): start skew, accuracy on the wire, events/s per core.

For a core layout (the fake server's cores, the client's cores) and each number of load workers K:

1. **accuracy**: `--users` (512) simultaneous users, first token after 100 ms, then one every 20 ms,
   100 tokens (bench_accuracy.py's server). Every client record is paired with the fake server's truth
   (`/fake/truth`, CLOCK_MONOTONIC like the client): start spread, barrier skew across workers, ΔE2E /
   ΔTTFT p50 against the wire truth, ΔITL mean, per-chunk and [DONE] lag, the cell's validity.
2. **streaming**: `--streams-per-worker` (1024) streams per worker, one token every 40 ms each (so each
   SSE event arrives in its own read, as a real server sends them), 50 tokens: events delivered per
   second, the client's CPU per event (all workers' loop threads), hence events/s per client core, and
   how many events each read carried (chunks with the same arrival stamp came in one read).

The fake server runs as one process per server core (`--server-cpus`), all listening on one port
(SO_REUSEPORT: the kernel spreads the connections), each pinned to its core and with a control port of
its own for its truth; its CPU use is measured per process, so that a server near a full core (the
bottleneck, not the client) is flagged. Each process's fake tokenizer is warmed with the same words in
the same order, so prompt sizing gives the same ids whichever process answers. The client's workers are
pinned round-robin to `--client-cpus` (K=1 runs on the coordinator's own loop, on the first client core).

    flock /tmp/llmload-vllm.lock .venv/bin/python benchmarks/bench_workers.py \\
        --server-cpus 0 --client-cpus 1 --workers 1,2 --ray --md benchmarks/results/workers.md \\
        --json benchmarks/results/workers.json
    python benchmarks/bench_workers.py --server-cpus 0-3 --client-cpus 4-15 --workers 1,2,4,8 --json out.json

Imports only what it needs (the package's load engine: httpx, uvloop; Ray only with --ray), never pytest,
so it runs on a bare machine with the repository on the path. Bounded: every cell has a request
timeout, and runs left when `--budget-s` is spent are skipped (and listed as skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import free_port, http_json  # noqa: E402

MODEL = "fake-model"
PROMPT_TOKENS = 64
ACCURACY = {"ttft_ms": 100.0, "itl_ms": 20.0, "tokens": 100}
STREAMING = {"ttft_ms": 100.0, "itl_ms": 40.0, "tokens": 50}
SERVER_BUSY_LIMIT = 0.85  # a fake server process busier than this may be the bottleneck


# ---- the fake server: one process per server core, one shared port ------------------------------------------
def load_fakeserver() -> ModuleType:
    """pytest_llmload/testing/fakeserver.py by path: `pytest_llmload.testing` imports pytest, this does not."""
    path = ROOT / "pytest_llmload" / "testing" / "fakeserver.py"
    spec = importlib.util.spec_from_file_location("llmload_fakeserver", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def prompt_key(prompt: str) -> str:
    """The key the fake server files a request's truth under (fakeserver.prompt_key)."""
    return hashlib.sha1(prompt.encode()).hexdigest()[:16]


def serve(port: int, control_port: int, cpu: int) -> None:
    """One fake server process (`--serve`): the shared port (SO_REUSEPORT) and its own control port."""
    from pytest_llmload.load.workload import WORDS

    fs = load_fakeserver()
    os.sched_setaffinity(0, {cpu})
    _raise_open_files()
    server = fs.FakeServer(fs.FakeConfig(max_model_len=100_000, **{k: v for k, v in ACCURACY.items() if k != "tokens"}))
    # The same ids in every process: the words prompt sizing uses, first alone, then after a space.
    for word in WORDS:
        server.tokenizer.encode(word)
    server.tokenizer.encode("x " + " ".join(WORDS))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server._loop = loop  # noqa: SLF001 - the fake server's timer heap runs on this loop
        factory = lambda: fs._HTTPServerProtocol(server)  # noqa: E731, SLF001
        await loop.create_server(factory, "127.0.0.1", port, backlog=8192, reuse_port=True)
        await loop.create_server(factory, "127.0.0.1", control_port, backlog=64)
        print("ready", flush=True)
        await asyncio.sleep(1800)

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def _raise_open_files() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class FakeFleet:
    """The fake server processes, their shared URL and their control URLs."""

    def __init__(self, cpus: list[int]) -> None:
        self.port = free_port()
        self.controls = [free_port() for _ in cpus]
        self.procs = [subprocess.Popen([sys.executable, __file__, "--serve", str(self.port), str(c), str(cpu)],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
                      for c, cpu in zip(self.controls, cpus)]
        for proc in self.procs:  # bounded: each says "ready" once bound, or exits
            line = proc.stdout.readline() if proc.stdout else b""
            if b"ready" not in line:
                self.stop()
                raise RuntimeError(f"a fake server process did not start (exit code {proc.poll()})")
        self.base_url = f"http://127.0.0.1:{self.port}"

    def each(self, path: str, body: dict[str, Any] | None = None) -> list[Any]:
        return [http_json(f"http://127.0.0.1:{c}{path}", body) for c in self.controls]

    def configure(self, **config: Any) -> None:
        self.each("/fake/config", config)

    def reset(self) -> None:
        self.each("/fake/reset", {})

    def truth(self) -> list[dict[str, Any]]:
        return [t for part in self.each("/fake/truth") for t in part]

    def cpu_seconds(self) -> list[float]:
        """CPU time (user + system) of each server process so far."""
        tick = os.sysconf("SC_CLK_TCK")
        out = []
        for proc in self.procs:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / tick)
        return out

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ---- the measurements --------------------------------------------------------------------------------------
def runner_for(fleet: FakeFleet, workers: int | str, client_cpus: list[int]) -> Any:
    from pytest_llmload.load.runner import LoadRunner

    if workers == "ray":
        return LoadRunner(fleet.base_url, MODEL, progress=False, request_timeout_s=120, cluster="ray", workers=2)
    return LoadRunner(fleet.base_url, MODEL, progress=False, request_timeout_s=120, workers=int(workers),
                      worker_cpus=client_cpus if int(workers) > 1 else ())


def prompts_for(runner: Any, users: int) -> list[str]:
    factory = runner._run(runner._prompt_factory())  # noqa: SLF001 - the bench pairs records by prompt
    return [p.text for p in runner._run(factory.prompts(PROMPT_TOKENS, users))]  # noqa: SLF001


def run_cell(fleet: FakeFleet, runner: Any, users: int, tokens: int) -> tuple[Any, dict[str, Any]]:
    """One cell, with the server processes' CPU share during it."""
    cpu0, t = fleet.cpu_seconds(), time.perf_counter()
    cell = runner.run_cell_kw(users, PROMPT_TOKENS, tokens)
    wall = time.perf_counter() - t
    busy = [(b - a) / wall for a, b in zip(cpu0, fleet.cpu_seconds())]
    return cell, {"server_busy_max": max(busy), "server_busy": [round(b, 3) for b in busy],
                  "server_may_be_bottleneck": max(busy) > SERVER_BUSY_LIMIT}


def client_figures(cell: Any) -> dict[str, Any]:
    client = cell.extra.get("client", {})
    workers = client.get("workers") or [client]
    return {"valid": cell.valid, "invalid_reasons": list(cell.invalid_reasons),
            "start_spread_ms": client.get("start_spread_s", 0) * 1e3,
            "barrier_skew_ms": None if client.get("barrier_skew_s") is None else client["barrier_skew_s"] * 1e3,
            "clock_uncertainty_ms": (None if client.get("clock_uncertainty_s") is None
                                     else client["clock_uncertainty_s"] * 1e3),
            "max_loop_lag_ms": client.get("max_loop_lag_s", 0) * 1e3, "busy_max": client.get("busy"),
            "client_cpu_s": sum(w.get("cpu_s", 0) for w in workers),
            "worker_cpus": [w.get("cpus") for w in workers], "requests_per_worker": [w.get("requests") for w in workers]}


def accuracy(fleet: FakeFleet, runner: Any, users: int) -> dict[str, Any]:
    fleet.configure(ttft_ms=ACCURACY["ttft_ms"], itl_ms=ACCURACY["itl_ms"], record_truth=True)
    prompts = prompts_for(runner, users)
    fleet.reset()
    cell, server = run_cell(fleet, runner, users, ACCURACY["tokens"])
    out = {"users": users, "ok": cell.stats.requests_ok if cell.stats else 0, "requests": len(cell.records),
           "error": cell.error, **client_figures(cell), **server}
    truth = {t["key"]: t for t in fleet.truth()}
    t0 = runner.last_t0
    pairs = [(r, truth.get(prompt_key(prompts[r.index]))) for r in cell.records if r.ok]
    pairs = [(r, t) for r, t in pairs if t and t["sends"] and t["done"] and r.first_token is not None]
    out["matched"] = len(pairs)
    if not pairs or cell.e2e is None or cell.ttft is None or cell.itl is None:
        return out
    med = statistics.median

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q / 100 * (len(xs) - 1) + 0.5))]

    wire_e2e = med(t["done"] - (t0 + r.start) for r, t in pairs)
    wire_ttft = med(t["sends"][0] - (t0 + r.start) for r, t in pairs)
    server_itl = statistics.fmean(b - a for _, t in pairs for a, b in zip(t["sends"], t["sends"][1:]))
    lag_chunk = [((t0 + c) - s) * 1e3 for r, t in pairs if len(r.chunk_times) == len(t["sends"])
                 for c, s in zip(r.chunk_times, t["sends"])]
    lag_end = [((t0 + r.end) - t["done"]) * 1e3 for r, t in pairs]
    backlog = [(t["recv"] - (t0 + r.start)) * 1e3 for r, t in pairs]
    out.update({
        "e2e_p50_s": cell.e2e.p50, "wire_e2e_p50_s": wire_e2e,
        "delta_e2e_p50_pct": (cell.e2e.p50 / wire_e2e - 1) * 100,
        "delta_ttft_p50_ms": (cell.ttft.p50 - wire_ttft) * 1e3,
        "delta_itl_mean_ms": (cell.itl.mean - server_itl) * 1e3,
        "lag_chunk_p50_ms": pct(lag_chunk, 50) if lag_chunk else None,
        "lag_chunk_p99_ms": pct(lag_chunk, 99) if lag_chunk else None,
        "lag_done_p50_ms": pct(lag_end, 50), "lag_done_p99_ms": pct(lag_end, 99),
        "server_backlog_p50_ms": pct(backlog, 50), "server_backlog_max_ms": max(backlog),
    })
    out["targets_met"] = (abs(out["delta_e2e_p50_pct"]) <= 2 and abs(out["delta_ttft_p50_ms"]) <= 5
                          and abs(out["delta_itl_mean_ms"]) <= 0.5 and out["start_spread_ms"] < 50)
    return out


def streaming(fleet: FakeFleet, runner: Any, streams: int) -> dict[str, Any]:
    fleet.configure(ttft_ms=STREAMING["ttft_ms"], itl_ms=STREAMING["itl_ms"], record_truth=False)
    prompts_for(runner, streams)  # sized before the cell, so that only the cell is measured
    cell, server = run_cell(fleet, runner, streams, STREAMING["tokens"])
    ok = [r for r in cell.records if r.ok]
    events = sum(len(r.chunk_times) for r in ok)
    reads = sum(len(set(r.chunk_times)) for r in ok)  # one data_received() stamps all the events it read
    firsts = [r.first_token for r in ok if r.first_token is not None]
    span = max(r.end for r in ok) - min(firsts) if firsts else 0.0
    figures = client_figures(cell)
    cpu = figures["client_cpu_s"]
    offered = streams * 1000.0 / STREAMING["itl_ms"]
    return {"streams": streams, "ok": len(ok), "error": cell.error, "events": events,
            "events_per_read": events / reads if reads else None, "offered_events_per_s": offered,
            "events_per_s": events / span if span else 0.0, "cpu_us_per_event": cpu / events * 1e6 if events else None,
            "events_per_s_per_client_core": events / cpu if cpu else None, **figures, **server}


# ---- the run -------------------------------------------------------------------------------------------------
def parse_cpus(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def machine(server_cpus: list[int], client_cpus: list[int]) -> dict[str, Any]:
    try:
        model = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                     if ln.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "cpu": model,
            "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "server_cpus": server_cpus, "client_cpus": client_cpus, "loadavg_at_start": os.getloadavg()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server-cpus", default="0", help="fake server cores, one process each (e.g. 0-3)")
    ap.add_argument("--client-cpus", default="1", help="client cores; workers are pinned round-robin (e.g. 4-15)")
    ap.add_argument("--workers", default="1,2", help="numbers of load workers to measure (e.g. 1,2,4,8)")
    ap.add_argument("--users", type=int, default=512, help="simultaneous users of the accuracy cell")
    ap.add_argument("--streams-per-worker", type=int, default=1024, help="streams per worker, streaming cell")
    ap.add_argument("--ray", action="store_true", help="also 2 Ray actors on a local Ray (needs ray)")
    ap.add_argument("--budget-s", type=float, default=220.0, help="runs not started by then are skipped")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--md", help="write a Markdown summary here")
    ap.add_argument("--render", metavar="JSON", help="only write --md from an earlier --json result")
    a = ap.parse_args()
    if a.render:
        Path(a.md or Path(a.render).with_suffix(".md")).write_text(markdown(json.loads(Path(a.render).read_text())))
        return
    started = time.monotonic()
    server_cpus, client_cpus = parse_cpus(a.server_cpus), parse_cpus(a.client_cpus)
    _raise_open_files()
    os.sched_setaffinity(0, set(client_cpus))  # Ray (if asked) inherits the client's cores
    ray = None
    if a.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    os.sched_setaffinity(0, {client_cpus[0]})  # K=1 measures on the first client core
    report: dict[str, Any] = {"machine": machine(server_cpus, client_cpus), "accuracy_server": ACCURACY,
                              "streaming_server": STREAMING, "runs": [], "skipped": []}
    fleet = FakeFleet(server_cpus)
    try:
        for workers in [int(w) for w in a.workers.split(",")] + (["ray"] if ray else []):
            if time.monotonic() - started > a.budget_s:
                report["skipped"].append(workers)
                continue
            with runner_for(fleet, workers, client_cpus) as runner:
                runner.run_cell_kw(8, PROMPT_TOKENS, 4)  # start the workers, warm the code paths
                run: dict[str, Any] = {"workers": workers, "accuracy": accuracy(fleet, runner, a.users)}
                if workers != "ray":
                    run["streaming"] = streaming(fleet, runner, a.streams_per_worker * int(workers))
            report["runs"].append(run)
            print(summary_line(run), flush=True)
    finally:
        fleet.stop()
        if ray is not None:
            ray.shutdown()
    report["machine"]["loadavg_at_end"] = os.getloadavg()
    report["machine"]["took_s"] = time.monotonic() - started
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=str) + "\n")
    if a.md:
        Path(a.md).write_text(markdown(report))
    print(f"took {report['machine']['took_s']:.0f} s" + (f"; skipped {report['skipped']}" if report["skipped"] else ""))


def summary_line(run: dict[str, Any]) -> str:
    acc, st = run["accuracy"], run.get("streaming")
    f = lambda d, k, fmt="{:.2f}": "-" if d is None or d.get(k) is None else fmt.format(d[k])  # noqa: E731
    line = (f"workers={run['workers']}: {acc['ok']}/{acc['requests']} ok, spread {f(acc, 'start_spread_ms', '{:.1f}')} ms, "
            f"skew {f(acc, 'barrier_skew_ms', '{:.1f}')} ms, ΔE2E {f(acc, 'delta_e2e_p50_pct')} %, "
            f"ΔTTFT {f(acc, 'delta_ttft_p50_ms')} ms, ΔITL {f(acc, 'delta_itl_mean_ms', '{:.3f}')} ms, "
            f"{'valid' if acc['valid'] else 'INVALID'}")
    if st:
        line += (f" | streaming {st['streams']} streams: {f(st, 'events_per_s', '{:,.0f}')} events/s, "
                 f"{f(st, 'cpu_us_per_event', '{:.1f}')} µs/event, {f(st, 'events_per_read')} events/read, "
                 f"{f(st, 'events_per_s_per_client_core', '{:,.0f}')} events/s per client core, "
                 f"{'valid' if st['valid'] else 'INVALID'}, server busy ≤ {f(st, 'server_busy_max', '{:.0%}')}")
    return line


def markdown(rep: dict[str, Any]) -> str:
    m = rep["machine"]
    f = lambda d, k, fmt="{:.2f}": "-" if d is None or d.get(k) is None else fmt.format(d[k])  # noqa: E731
    lines = [f"# Load workers: start skew, accuracy on the wire, events/s per core ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; fake server on CPUs "
             f"{m['server_cpus']} (one process each), client on CPUs {m['client_cpus']}; load average "
             f"{m['loadavg_at_start'][0]:.2f} at start, {m['loadavg_at_end'][0]:.2f} at end; {m['took_s']:.0f} s.", "",
             f"Accuracy cell: server TTFT {rep['accuracy_server']['ttft_ms']:g} ms, ITL "
             f"{rep['accuracy_server']['itl_ms']:g} ms, {rep['accuracy_server']['tokens']} tokens; truth on the wire "
             "from the server's own stamps (CLOCK_MONOTONIC). Targets: ΔE2E p50 ≤ 2 %, ΔTTFT p50 ≤ 5 ms, "
             "ΔITL mean ≤ 0.5 ms, start spread < 50 ms.", "",
             "| workers | ok | start spread ms | barrier skew ms | ΔE2E p50 % | ΔTTFT p50 ms | ΔITL mean ms "
             "| lag per chunk p50/p99 ms | lag [DONE] p50/p99 ms | max loop lag ms | server busy max | valid | targets |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in rep["runs"]:
        a = run["accuracy"]
        lines.append(
            f"| {run['workers']} | {a['ok']}/{a['requests']} | {f(a, 'start_spread_ms', '{:.1f}')} | "
            f"{f(a, 'barrier_skew_ms', '{:.1f}')} | {f(a, 'delta_e2e_p50_pct')} | {f(a, 'delta_ttft_p50_ms')} | "
            f"{f(a, 'delta_itl_mean_ms', '{:.3f}')} | {f(a, 'lag_chunk_p50_ms')} / {f(a, 'lag_chunk_p99_ms')} | "
            f"{f(a, 'lag_done_p50_ms')} / {f(a, 'lag_done_p99_ms')} | {f(a, 'max_loop_lag_ms', '{:.0f}')} | "
            f"{f(a, 'server_busy_max', '{:.0%}')} | {'yes' if a['valid'] else 'no: ' + '; '.join(a['invalid_reasons'])} | "
            f"{'met' if a.get('targets_met') else 'missed'} |")
    lines += ["", f"Streaming cell: one token every {rep['streaming_server']['itl_ms']:g} ms per stream, "
              f"{rep['streaming_server']['tokens']} tokens; events/s per client core = events / the workers' "
              "loop CPU seconds.", "",
              "| workers | streams | ok | offered events/s | events/s | events per read | client CPU µs/event "
              "| events/s per client core | busiest loop | server busy max | valid |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in rep["runs"]:
        s = run.get("streaming")
        if not s:
            continue
        lines.append(
            f"| {run['workers']} | {s['streams']} | {s['ok']} | {f(s, 'offered_events_per_s', '{:,.0f}')} | "
            f"{f(s, 'events_per_s', '{:,.0f}')} | {f(s, 'events_per_read')} | {f(s, 'cpu_us_per_event', '{:.1f}')} | "
            f"{f(s, 'events_per_s_per_client_core', '{:,.0f}')} | {f(s, 'busy_max', '{:.0%}')} | "
            f"{f(s, 'server_busy_max', '{:.0%}')}{' (bottleneck?)' if s['server_may_be_bottleneck'] else ''} | "
            f"{'yes' if s['valid'] else 'no: ' + '; '.join(s['invalid_reasons'])} |")
    if rep["skipped"]:
        lines += ["", f"Skipped (budget spent): {rep['skipped']}."]
    lines += ["", "What this layout cannot show:", ""] + [f"- {c}" for c in caveats(rep)]
    return "\n".join(lines) + "\n"


def caveats(rep: dict[str, Any]) -> list[str]:
    """What the measured layout cannot show, read from the layout and the results themselves."""
    m = rep["machine"]
    client, out = len(m["client_cpus"]), []
    crowded = [r["workers"] for r in rep["runs"] if r["workers"] != "ray" and int(r["workers"]) > client]
    if crowded:
        out.append(f"workers={crowded} share the {client} client core(s) (pinned round-robin): events/s cannot "
                   f"grow past what {client} core(s) read, so the scaling curve past {client} worker(s) is not shown")
    busy = [(r["workers"], part, r[part]["server_busy_max"]) for r in rep["runs"] for part in ("accuracy", "streaming")
            if r.get(part) and r[part]["server_busy_max"] > 0.75]
    if busy:
        out.append("the fake server was busy above 75 % of a core in " + ", ".join(
            f"workers={w} {part} ({b:.0%})" for w, part, b in busy) + f" with {len(m['server_cpus'])} server "
            "process(es): there it is close to being the bottleneck (its truth stays exact; the events/s "
            "delivered may be the server's limit, not the client's)")
    if any(r["workers"] == "ray" for r in rep["runs"]):
        out.append("Ray ran as a local cluster on this one host: the actors share its clocks (offsets ~0), so the "
                   "barrier skew across hosts and the clock-offset uncertainty of a real cluster are not exercised")
    if (m.get("cores") or 0) <= 2:
        out.append("on 2 cores the client and the fake server have one core each, and other work on the machine "
                   "shares them (see the load average): numbers vary by a few ms between runs")
    return out or ["nothing noted: every run had its own client core and a server below 75 % busy"]


if __name__ == "__main__":
    main()
