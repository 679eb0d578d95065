"""`vllm-bench` export: each measured cell as the result files `vllm bench serve --save-result` writes.

Layout: ``<report dir>/vllm-bench/u8-p63-m100/openai-infqps-concurrency8-<model>-<date>-repeat1.json``,
one folder per cell and one file per repeat, so that a tool that judges repeated vLLM bench runs reads
a cell's folder as one side. The keys, their order, units and types are those of vLLM 0.32's
``vllm/benchmarks/serve.py`` run as

    vllm bench serve --backend openai --max-concurrency U --request-rate inf \\
        --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,95,99 --save-result

(without ``--save-detailed``): run settings (`date`, `backend`, `model_id`, `num_prompts`,
`request_rate` "inf", `max_concurrency` = users), totals (`duration` s, `completed`, `failed`, token
counts, throughputs per second), the per-request `latencies` (s) and `queue_times` (0: our users never
wait for a slot), `max_output_tokens_per_s` / `max_concurrent_requests` (vLLM's one-second buckets)
and, for ttft/tpot/itl/e2el, `mean_*_ms`, `median_*_ms`, `std_*_ms` (population) and `p50/p90/p95/p99_*_ms`
(linear interpolation, numpy's default). The values are this plugin's measurements under the same
definitions (STYLE 11); E2E is the last byte of the response, where vLLM stops at the last chunk.

Only closed-loop repeats that ran and are valid are written: a failed or invalid repeat is not a number
anyone should read as a measurement (`SKIPPED.txt` in the folder says which were left out and why).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..results import CellResult, RequestRecord, RunResult
from ..vocabulary import inter_token_latencies, percentile
from ._files import atomic_write_text
from .exports import cell_id

EXPORT_DIR = "vllm-bench"
PERCENTILES = (50, 90, 95, 99)
PERCENTILE_METRICS = ("ttft", "tpot", "itl", "e2el")
# The command line whose result files ours match key for key (the e2e test runs it).
VLLM_BENCH_FLAGS = ("--percentile-metrics", ",".join(PERCENTILE_METRICS),
                    "--metric-percentiles", ",".join(str(p) for p in PERCENTILES))


def write_vllm_bench(run: RunResult, report_dir: Path | str) -> list[Path]:
    """Write every valid closed-loop repeat as a vLLM bench result file; the paths written."""
    root = Path(report_dir) / EXPORT_DIR
    written: list[Path] = []
    skipped: list[str] = []
    counts: dict[str, int] = {}
    for cell in run.cells:
        cid = cell_id(cell)
        counts[cid] = counts.get(cid, 0) + 1 if cell.mode == "closed" else 0
        why = _skip_reason(cell)
        if why:
            skipped.append(f"{cell.label} repeat {counts[cid] or '-'}: {why}")
            continue
        doc = result_document(cell, run.environment)
        name = (f"{doc['backend']}-infqps-concurrency{cell.users}-{_base_model(doc['model_id'])}-{doc['date']}"
                f"-repeat{counts[cid]}.json")
        written.append(atomic_write_text(root / cid / name, json.dumps(doc)))
    if skipped:
        written.append(atomic_write_text(root / "SKIPPED.txt", "Not exported (never a measurement):\n"
                                         + "".join(f"- {s}\n" for s in skipped)))
    return written


def _skip_reason(cell: CellResult) -> str:
    if cell.mode != "closed":
        return "an open-loop cell (vLLM bench files describe concurrency-bounded runs here)"
    if not cell.ok:
        return f"failed: {cell.error or 'no request succeeded'}"
    if not cell.valid:
        return "invalid: " + ("; ".join(cell.invalid_reasons) or "no reason given")
    if not cell.records:
        return "no per-request records (read from a file without them)"
    return ""


def _base_model(model_id: str) -> str:
    return model_id.split("/")[-1] or "model"


def result_document(cell: CellResult, environment: dict[str, Any]) -> dict[str, Any]:
    """One repeat of a closed-loop cell as the JSON object `vllm bench serve --save-result` writes."""
    records = sorted(cell.records, key=lambda r: r.index)
    ok = [r for r in records if r.ok]
    duration = cell.stats.duration_s if cell.stats else _span(records)
    total_in = sum(r.prompt_tokens if r.prompt_tokens is not None else (r.expected_prompt_tokens or 0) for r in ok)
    total_out = sum(r.output_tokens or 0 for r in ok)
    model = str(environment.get("served_model_name") or environment.get("model") or "model")
    workload = environment.get("workload") if isinstance(environment.get("workload"), dict) else {}
    backend = "openai-chat" if (workload or {}).get("api") == "chat" else "openai"
    peak_tokens, peak_requests = _peaks(ok)
    doc: dict[str, Any] = {
        "date": _date(cell, duration),
        "endpoint_type": backend,
        "backend": backend,
        "label": None,
        "model_id": model,
        "tokenizer_id": model,
        "num_prompts": len(records),
        "request_rate": "inf",
        "burstiness": 1.0,
        "max_concurrency": cell.users,
        "duration": float(duration),
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": int(total_in),
        "total_output_tokens": int(total_out),
        "request_throughput": _per_s(len(ok), duration),
        "request_goodput": None,
        "output_throughput": _per_s(total_out, duration),
        "total_token_throughput": _per_s(total_in + total_out, duration),
        "latencies": [r.e2e if r.ok else 0.0 for r in records],
        "queue_times": [0.0 for _ in records],
        "max_output_tokens_per_s": peak_tokens,
        "max_concurrent_requests": peak_requests,
        "rtfx": 0.0,
    }
    samples = {
        "ttft": [r.ttft for r in ok if r.ttft is not None],
        "tpot": [_tpot(r) for r in ok if (r.output_tokens or 0) > 1 and r.ttft is not None],
        "itl": [gap for r in ok for gap in inter_token_latencies(r)],
        "e2el": [r.e2e for r in ok],
    }
    for metric in PERCENTILE_METRICS:
        doc.update(_metric_keys(metric, samples[metric]))
    return doc


def _metric_keys(metric: str, values: Sequence[float]) -> dict[str, float]:
    """mean/median/std/pNN in ms, as vLLM's `process_one_metric` (numpy over `values or 0`)."""
    xs = sorted(values) or [0.0]
    mean = math.fsum(xs) / len(xs)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / len(xs))
    out = {f"mean_{metric}_ms": mean * 1000, f"median_{metric}_ms": percentile(xs, 50) * 1000,
           f"std_{metric}_ms": std * 1000}
    out.update({f"p{p}_{metric}_ms": percentile(xs, p) * 1000 for p in PERCENTILES})
    return out


def _tpot(r: RequestRecord) -> float:
    assert r.ttft is not None and r.output_tokens
    return (r.e2e - r.ttft) / (r.output_tokens - 1)


def _peaks(ok: Sequence[RequestRecord]) -> tuple[float, int]:
    """vLLM's peak output tokens/s and concurrent requests: chunks and requests in one-second buckets
    from the first request start (a chunk counts as one token, as in vLLM's bench)."""
    if not ok:
        return 0.0, 0
    t0 = min(r.start for r in ok)
    buckets = int(math.ceil(max(r.end for r in ok) - t0)) + 1
    tokens, running = [0] * buckets, [0] * buckets
    for r in ok:
        for t in r.chunk_times:
            b = int(t - t0)
            if 0 <= b < buckets:
                tokens[b] += 1
        for b in range(int(r.start - t0), int(r.end - t0) + 1):
            running[b] += 1
    return float(max(tokens)), int(max(running))


def _per_s(n: float, duration: float) -> float:
    return n / duration if duration > 0 else 0.0


def _span(records: Sequence[RequestRecord]) -> float:
    return max(r.end for r in records) - min(r.start for r in records) if records else 0.0


def _date(cell: CellResult, duration: float) -> str:
    """vLLM's `date`: local time when the benchmark ended, %Y%m%d-%H%M%S."""
    if cell.t0_unix_ns is None:
        return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    ended = cell.t0_unix_ns / 1e9 + duration
    return _dt.datetime.fromtimestamp(ended).strftime("%Y%m%d-%H%M%S")
