"""Synthetic records and cells for unit tests of metrics, SLOs and capacity (no server involved)."""

from __future__ import annotations

from pytest_llmload.metrics import cell_stats
import random

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


def make_cell(users: int, prompt: int, *, ok: bool = True, extra: dict | None = None) -> CellResult:
    if not ok:
        return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=False, error="server_died")
    recs = make_records(users, e2e=1.5 + users * 0.05 + prompt / 1000, ttft=0.05 + prompt / 5000, seed=users * 7 + prompt)
    return CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=True, stats=cell_stats(recs),
                      records=tuple(recs), extra=extra or {})


def make_run(users=(1, 2, 4), prompts=(31, 296), failed=((4, 296),)) -> RunResult:
    cells = [make_cell(u, p, ok=(u, p) not in failed) for u in users for p in prompts]
    return RunResult(environment={"model": "Mistral-7B", "tensor_parallel_size": 1}, cells=cells)
