"""Synthetic records and cells for unit tests of metrics, SLOs and capacity (no server involved)."""

from __future__ import annotations

from pytest_llmload.metrics import cell_stats
from pytest_llmload.results import CellResult, RequestRecord


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
