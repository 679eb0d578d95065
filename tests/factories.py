"""Synthetic records and cells for unit tests of metrics, SLOs and capacity (no server involved)."""

from __future__ import annotations

import random
from typing import Any

from pytest_llmload.metrics import cell_stats

from pytest_llmload.results import CellResult, RequestRecord, RunResult


def record(index: int = 0, *, start: float = 0.0, ttft: float = 0.1, itl: float = 0.02, tokens: int = 100,
           error: str | None = None, prompt_tokens: int = 31) -> RequestRecord:
    """A request whose first token came after `ttft` and the others every `itl` seconds."""
    if error:
        return RequestRecord(index=index, start=start, end=start + ttft, error=error)
    chunks = tuple(start + ttft + i * itl for i in range(tokens))
    return RequestRecord(index=index, start=start, end=chunks[-1], first_token=chunks[0], chunk_times=chunks,
                         prompt_tokens=prompt_tokens, output_tokens=tokens, expected_prompt_tokens=prompt_tokens)


def cell(users: int = 4, prompt_tokens: int = 31, *, ttft: float = 0.1, itl: float = 0.02, tokens: int = 100,
         failed: int = 0, error: str | None = None) -> CellResult:
    """A closed-loop cell of `users` identical requests, `failed` of them failing with http_500."""
    records = [record(i, ttft=ttft, itl=itl, tokens=tokens, prompt_tokens=prompt_tokens) for i in range(users - failed)]
    records += [record(users - failed + i, error="http_5xx") for i in range(failed)]
    ok = error is None and failed < users
    return CellResult(users=users, prompt_tokens=prompt_tokens, max_tokens=tokens, ok=ok,
                      error=error or (None if ok else "every request failed"),
                      stats=cell_stats(records), records=tuple(records))


def make_records(n: int, *, e2e: float, ttft: float, seed: int, tokens: int = 100) -> list[RequestRecord]:
    """n streamed requests with ~5 % lognormal noise, content chunks evenly spread after the first."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        start, first = i * 0.001, ttft * rng.lognormvariate(0, 0.05)
        total = max(e2e * rng.lognormvariate(0, 0.05), first + 0.01)
        step = (total - first) / (tokens - 1)
        chunks = tuple(start + first + k * step for k in range(tokens))
        out.append(RequestRecord(index=i, start=start, end=start + total, first_token=start + first,
                                 chunk_times=chunks, output_tokens=tokens))
    return out


def make_cell(users: int, prompt: int, *, ok: bool = True, extra: dict[str, Any] | None = None) -> CellResult:
    if not ok:
        return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=False, error="server_died")
    recs = make_records(users, e2e=1.5 + users * 0.05 + prompt / 1000, ttft=0.05 + prompt / 5000, seed=users * 7 + prompt)
    return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=True, stats=cell_stats(recs),
                      records=tuple(recs), extra=extra or {})


def make_run(users=(1, 2, 4), prompts=(31, 296), failed=((4, 296),)) -> RunResult:
    cells = [make_cell(u, p, ok=(u, p) not in failed) for u in users for p in prompts]
    return RunResult(environment={"model": "Mistral-7B", "tensor_parallel_size": 1}, cells=cells)


def repeat_cell(users: int, prompt: int, *, e2e: float, ttft: float = 0.05, seed: int = 0, noise: float = 0.05,
                valid: bool = True, reasons: tuple[str, ...] = (), ok: bool = True) -> CellResult:
    """One repeat of a cell: `users` requests around `e2e` / `ttft` seconds (lognormal request noise of
    sigma `noise`); `valid=False` with `reasons` marks it as a measurement the tool cannot vouch for."""
    if not ok:
        return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=False, error="server_died")
    recs = _noisy(users, e2e, ttft, seed, noise)
    return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=True, stats=cell_stats(recs),
                      records=tuple(recs), valid=valid, invalid_reasons=reasons)


def _noisy(n: int, e2e: float, ttft: float, seed: int, noise: float) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        first = ttft * rng.lognormvariate(0, noise)
        total = max(e2e * rng.lognormvariate(0, noise), first + 0.01)
        step = (total - first) / 99
        out.append(RequestRecord(index=i, start=i * 0.001, end=i * 0.001 + total, first_token=i * 0.001 + first,
                                 chunk_times=tuple(i * 0.001 + first + k * step for k in range(100)),
                                 output_tokens=100))
    return out


def repeated_run(levels: dict[tuple[int, int], list[float]], *, seed: int = 0, environment: dict[str, Any] | None = None,
                 invalid: dict[tuple[int, int, int], str] | None = None) -> RunResult:
    """A run whose cell (users, prompt) was measured once per level in `levels[(users, prompt)]` (its E2E
    in seconds), in passes like the session's; `invalid[(users, prompt, repeat)]` marks a repeat invalid."""
    invalid = invalid or {}
    cells = []
    for r in range(max(len(v) for v in levels.values())):
        for (u, p), values in levels.items():
            if r < len(values):
                reason = invalid.get((u, p, r))
                cells.append(repeat_cell(u, p, e2e=values[r], ttft=values[r] / 10, seed=seed * 1000 + r * 100 + u + p,
                                         valid=reason is None, reasons=(reason,) if reason else ()))
    env = {"model": "m", "tensor_parallel_size": 1, "dtype": "float32", "cpu_model": "Xeon", "cpu_count": 2}
    return RunResult(environment={**env, **(environment or {})}, cells=cells)


HOSTILE = "<script>alert('x')</script>&"


def rich_run() -> RunResult:
    """A run with a failed cell, every optional section and a hostile model name (for the HTML report)."""
    run = make_run(users=(1, 2, 4, 8), prompts=(31, 296, 2193), failed=((8, 2193),))
    run.environment["model"] = "Mistral-7B " + HOSTILE
    run.environment["server_args"] = {"dtype": "auto", "tensor_parallel_size": 1}
    run.cells[0].extra["gpu"] = {"util_pct": 97.5, "mem_used_gib": 70.1, "name": HOSTILE}
    run.cells[1].extra["physical_limit"] = {"bound": "memory bandwidth", "percent": 71.2}
    run.cells[2].extra["warnings"] = ["start spread 0.4 s > 0.1 s", HOSTILE]
    run.cells[3].extra["server_metrics"] = {"num_preemptions": 0, "gpu_cache_usage_perc": 0.42}
    return run
