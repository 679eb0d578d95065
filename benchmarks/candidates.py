"""HTTP stacks the benchmark compares with pytest_llmload's own client: httpx and aiohttp.

Each sends N streaming requests at once, the way a careful user of that library would (one client, the
connection pool large enough, no read timeout), timestamps every data line as the library hands it
over, and decodes every line with json.loads, as typical clients do.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from pytest_llmload.load.client import request_body
from pytest_llmload.results import RequestRecord


def _record(index: int, t0: float, start: float, times: list[float], usage: dict[str, Any] | None,
            end: float, error: str | None = None) -> RequestRecord:
    return RequestRecord(index=index, start=start - t0, end=end - t0,
                         first_token=times[0] - t0 if times else None,
                         chunk_times=tuple(t - t0 for t in times),
                         prompt_tokens=(usage or {}).get("prompt_tokens"),
                         output_tokens=(usage or {}).get("completion_tokens"), error=error)


def _event(line: str, times: list[float], now: float) -> dict[str, Any] | None | bool:
    """Handle one SSE line: True at [DONE], the usage dict when it comes, else None."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return True
    obj = json.loads(data)
    if obj.get("choices") and obj["choices"][0].get("text"):
        times.append(now)
    usage = obj.get("usage")
    return usage if isinstance(usage, dict) else None


async def run_httpx(base_url: str, model: str, prompts: list[str], max_tokens: int, *, tuned: bool = True,
                    timeout: float = 120.0) -> tuple[list[RequestRecord], float]:
    """N simultaneous streams through one httpx.AsyncClient (tuned: pool >= N, no read timeout)."""
    import httpx

    kw: dict[str, Any] = {}
    if tuned:
        kw = {"limits": httpx.Limits(max_connections=len(prompts) + 8, max_keepalive_connections=0),
              "timeout": httpx.Timeout(timeout)}
    async with httpx.AsyncClient(**kw) as client:
        t0 = time.perf_counter()

        async def one(i: int, prompt: str) -> RequestRecord:
            body = request_body("completions", model, prompt, max_tokens)  # the same request as ours
            times: list[float] = []
            usage = None
            start = time.perf_counter()
            try:
                async with client.stream("POST", base_url + "/v1/completions", json=body) as r:
                    async for line in r.aiter_lines():
                        res = _event(line, times, time.perf_counter())
                        if res is True:
                            break
                        usage = res or usage
            except httpx.HTTPError as e:
                return _record(i, t0, start, times, usage, time.perf_counter(), type(e).__name__)
            return _record(i, t0, start, times, usage, time.perf_counter())

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))), t0


async def run_aiohttp(base_url: str, model: str, prompts: list[str], max_tokens: int,
                      timeout: float = 120.0) -> tuple[list[RequestRecord], float]:
    """N simultaneous streams through one aiohttp.ClientSession (no connection limit)."""
    import aiohttp

    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        t0 = time.perf_counter()

        async def one(i: int, prompt: str) -> RequestRecord:
            body = request_body("completions", model, prompt, max_tokens)  # the same request as ours
            times: list[float] = []
            usage = None
            start = time.perf_counter()
            try:
                async with session.post(base_url + "/v1/completions", json=body) as r:
                    async for raw in r.content:
                        res = _event(raw.decode(), times, time.perf_counter())
                        if res is True:
                            break
                        usage = res or usage
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                return _record(i, t0, start, times, usage, time.perf_counter(), type(e).__name__)
            return _record(i, t0, start, times, usage, time.perf_counter())

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))), t0
