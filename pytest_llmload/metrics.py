"""Pure functions: request records -> the metrics of a cell.

Definitions follow vLLM's `benchmarks/serve` (and GuideLLM):
- E2E (the study's "time to resolve"): last byte of the response minus request start.
- TTFT: arrival of the first chunk that carries content minus request start (the role-only chunk
  a chat stream starts with does not count).
- ITL: the gaps between consecutive content chunks of a request, pooled over the cell's requests.
  When one chunk carries several tokens (vLLM coalesces under load) its gap is one ITL sample,
  exactly as vLLM's bench records it.
- TPOT: (E2E - TTFT) / (output_tokens - 1), per request; output tokens from the server's `usage`.
- tokens/s per user: output_tokens / E2E, per request (the study's Fig. 1).
- total tokens/s: the sum of output tokens of successful requests / the cell's duration, from the
  first request start to the last request end (the study's Fig. 2).
- requests/s: successful requests / the cell's duration.
- start spread: the last request start minus the first, i.e. how long the client needed to put all
  N requests on the wire; large values mean "simultaneous" was not.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from .results import CellStats, Distribution, RequestRecord

PERCENTILES = (50, 90, 95, 99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted sequence (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def distribution(values: Iterable[float]) -> Distribution | None:
    """Summarise a sample; None for an empty one (a metric that cannot be computed)."""
    xs = sorted(values)
    if not xs:
        return None
    p50, p90, p95, p99 = (percentile(xs, q) for q in PERCENTILES)
    return Distribution(p50=p50, p90=p90, p95=p95, p99=p99, mean=math.fsum(xs) / len(xs),
                        min=xs[0], max=xs[-1], count=len(xs))


def inter_token_latencies(record: RequestRecord) -> list[float]:
    """Gaps between consecutive content chunks of one request."""
    t = record.chunk_times
    return [b - a for a, b in zip(t, t[1:])]


def time_per_output_token(record: RequestRecord) -> float | None:
    """(E2E - TTFT) / (output_tokens - 1); None when it is undefined (one token, no TTFT)."""
    if record.ttft is None or not record.output_tokens or record.output_tokens < 2:
        return None
    return (record.e2e - record.ttft) / (record.output_tokens - 1)


def start_spread(records: Sequence[RequestRecord]) -> float:
    """Seconds between the first and the last request start."""
    if not records:
        return 0.0
    starts = [r.start for r in records]
    return max(starts) - min(starts)


def cell_duration(records: Sequence[RequestRecord]) -> float:
    """Seconds from the first request start to the last request end."""
    if not records:
        return 0.0
    return max(r.end for r in records) - min(r.start for r in records)


def cell_stats(records: Sequence[RequestRecord]) -> CellStats:
    """All metrics of a cell. Failed requests count only in `errors` and `requests_failed`."""
    ok = [r for r in records if r.ok]
    duration = cell_duration(records)
    out_tokens = sum(r.output_tokens or 0 for r in ok)
    tpots = [x for x in (time_per_output_token(r) for r in ok) if x is not None]
    per_user = [r.output_tokens / r.e2e for r in ok if r.output_tokens and r.e2e > 0]
    return CellStats(
        e2e=distribution(r.e2e for r in ok),
        ttft=distribution(r.ttft for r in ok if r.ttft is not None),
        itl=distribution(gap for r in ok for gap in inter_token_latencies(r)),
        tpot=distribution(tpots),
        tokens_per_s_per_user=distribution(per_user),
        total_tokens_per_s=out_tokens / duration if duration > 0 else 0.0,
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        requests_ok=len(ok),
        requests_failed=len(records) - len(ok),
        errors=dict(Counter(r.error for r in records if r.error is not None)),
        start_spread_s=start_spread(records),
        duration_s=duration,
        prompt_tokens_mismatches=sum(
            1 for r in ok
            if r.expected_prompt_tokens is not None and r.prompt_tokens is not None
            and r.prompt_tokens != r.expected_prompt_tokens
        ),
    )
