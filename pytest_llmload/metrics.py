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
- TTFC: arrival of the first chunk with answer content (not reasoning) minus request start; the TTFT
  of a stream without reasoning.
- reasoning tokens: per request that carried reasoning (usage's count, else its reasoning chunks).
- start spread: the last request start minus the first, i.e. how long the client needed to put all
  N requests on the wire; large values mean "simultaneous" was not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from .results import CellStats, RequestRecord
from .vocabulary import METRICS, distribution


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
    dists = {name: distribution(v for r in ok for v in m.per_request(r))
             for name, m in METRICS.items() if m.per_request is not None}
    return CellStats(
        **dists,
        total_tokens_per_s=out_tokens / duration if duration > 0 else 0.0,
        requests_per_s=len(ok) / duration if duration > 0 else 0.0,
        prefix_cache_hit_rate=None,  # from the server's counters: the runner adds it
        goodput=None,  # needs per-request limits: the runner adds it
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
