"""The one metric vocabulary: every metric's name, unit, direction, how it is read from one request,
the statistics that exist for it, and the two ways users name a metric with a statistic.

Everything that names a metric goes through `METRICS`: options (`--llm-report-metrics`), objectives
(`e2e_p95_s=20`), gates (`e2e_p95:10%`), comparisons and reports. Statistics are computed by one
function, `percentile` (linear interpolation, numpy's default), so every layer agrees on a p95.

Definitions follow vLLM's `benchmarks/serve` and GuideLLM (see `metrics.py` for the cell-level ones):

    e2e                    last byte of the response - request start               per request, s
    ttft                   first chunk carrying content - request start            per request, s
    itl                    gaps between consecutive content chunks                 per gap, s
    tpot                   (e2e - ttft) / (output tokens - 1)                      per request, s
    tokens_per_s_per_user  output tokens / e2e                                     per request, tok/s
    total_tokens_per_s     output tokens of successful requests / cell duration    per cell, tok/s
    requests_per_s         successful requests / cell duration                     per cell, req/s
    ttfc                   first chunk carrying answer content - request start     per request, s
                           (= TTFT without reasoning; reasoning chunks do not count)
    reasoning_tokens       tokens of the reasoning part of a stream                per request, tokens
    prefix_cache_hit_rate  the server's prefix-cache hits / queries (/metrics deltas) per cell, fraction
    goodput                requests meeting every per-request limit / all requests  per cell, fraction

Run-level metrics (`RUN_METRICS`), one value per start of a server the session launched:

    startup                launch -> ready (/health and /v1/models answer)       per start, s
    first_ttft             TTFT of the first request after ready                  per start, s

This module is a leaf: it imports nothing of the package but `errors`, and reads records and cell
statistics through the small protocols below.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from .errors import ConfigError

STATS = ("p50", "p90", "p95", "p99", "mean", "min", "max")  # what a Distribution holds
PERCENTILES = (50, 90, 95, 99)
GATE_STATS = ("p50", "p90", "p95", "p99", "mean")  # statistics a regression gate may compare


class RecordLike(Protocol):
    """What the per-request extractors read from a request record (`results.RequestRecord`)."""

    @property
    def e2e(self) -> float: ...
    @property
    def ttft(self) -> float | None: ...
    @property
    def chunk_times(self) -> tuple[float, ...]: ...
    @property
    def output_tokens(self) -> int | None: ...
    @property
    def ttfc(self) -> float | None: ...
    @property
    def reasoning_tokens(self) -> int | None: ...
    @property
    def ok(self) -> bool: ...


# ------------------------------------------------------------------------------------ statistics


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of an already sorted sequence (numpy's default method)."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of a sample: percentiles, mean, extremes and the sample size."""

    p50: float
    p90: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float
    count: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Distribution:
        return cls(**{f.name: d[f.name] for f in fields(cls)})

    def __repr__(self) -> str:
        # What pytest prints under a failed `assert result.e2e.p95 < 20`: the whole distribution.
        return f"<Distribution {self.describe('')}>"

    def describe(self, unit: str = "s") -> str:
        """One line for failure messages: `p50 1.23s p90 … max …  (n=32)`."""
        parts = [f"{k} {getattr(self, k):.4g}{unit}" for k in STATS]
        return "  ".join(parts) + f"  (n={self.count})"


def distribution(values: Iterable[float]) -> Distribution | None:
    """Summarise a sample; None for an empty one (a metric that cannot be computed)."""
    xs = sorted(values)
    if not xs:
        return None
    p50, p90, p95, p99 = (percentile(xs, q) for q in PERCENTILES)
    return Distribution(p50=p50, p90=p90, p95=p95, p99=p99, mean=math.fsum(xs) / len(xs),
                        min=xs[0], max=xs[-1], count=len(xs))


def statistic(values: Sequence[float], stat: str) -> float:
    """One statistic of a non-empty sample, as a Distribution would hold it."""
    if stat == "mean":
        return math.fsum(values) / len(values)
    xs = sorted(values)
    if stat == "min":
        return xs[0]
    if stat == "max":
        return xs[-1]
    return percentile(xs, float(stat[1:]))


# --------------------------------------------------------------------------- per-request values


def inter_token_latencies(record: RecordLike) -> list[float]:
    """Gaps between consecutive content chunks of one request."""
    t = record.chunk_times
    return [b - a for a, b in zip(t, t[1:])]


def time_per_output_token(record: RecordLike) -> float | None:
    """(E2E - TTFT) / (output_tokens - 1); None when it is undefined (one token, no TTFT)."""
    if record.ttft is None or not record.output_tokens or record.output_tokens < 2:
        return None
    return (record.e2e - record.ttft) / (record.output_tokens - 1)


def tokens_per_s(record: RecordLike) -> float | None:
    """Output tokens / E2E: how fast this user was served (the study's Fig. 1)."""
    return record.output_tokens / record.e2e if record.output_tokens and record.e2e > 0 else None


def _one(value: float | None) -> list[float]:
    return [] if value is None else [value]


def goodput_of(records: Sequence[RecordLike], ttft_s: float | None = None, tpot_s: float | None = None) -> float | None:
    """The share of requests that met every per-request limit given (TTFT, TPOT), as vLLM's bench
    (`--goodput ttft:MS tpot:MS`) and GuideLLM judge a request: a failed request is not good, and a
    request whose TPOT is undefined (one token) is judged on TTFT alone. None without requests or limits."""
    if not records or (ttft_s is None and tpot_s is None):
        return None
    good = 0
    for r in records:
        if not r.ok or (ttft_s is not None and (r.ttft is None or r.ttft > ttft_s)):
            continue
        tpot = time_per_output_token(r)
        if tpot_s is not None and tpot is not None and tpot > tpot_s:
            continue
        good += 1
    return good / len(records)


# ------------------------------------------------------------------------------------ the registry


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric: how it is named, stored, shown and judged.

    Stored values are SI (seconds, tokens/s, requests/s); `scale` converts them to the shown `unit`.
    `per_request` gives a request's values (ITL gives one per gap); None for a cell-level scalar.
    """

    name: str
    title: str
    unit: str  # as shown: "s", "ms", "tok/s", "req/s"
    per_request: Callable[[RecordLike], list[float]] | None
    higher_is_better: bool = False
    scale: float = 1.0
    decimals: int = 1
    json_key: str = ""  # its key among a cell's stats in llmload.json (default: the name)
    limit_stats: tuple[str, ...] = ()  # statistics an objective may limit (`e2e_p95_s=20`)

    @property
    def scalar(self) -> bool:
        """One number per cell (no distribution, so no statistic)."""
        return self.per_request is None

    @property
    def key(self) -> str:
        return self.json_key or self.name

    def format(self, value: float) -> str:
        """A stored value in the shown unit and precision."""
        return f"{value * self.scale:.{self.decimals}f}"


_LATENCY_LIMITS = ("p50", "p90", "p95", "p99", "mean", "max")
_SPEED_LIMITS = ("min", "p50", "mean")

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("e2e", "Time to resolve (s), E2E", "s", lambda r: [r.e2e], json_key="e2e_s",
           limit_stats=_LATENCY_LIMITS),
    Metric("ttft", "Time to first token (ms), TTFT", "ms", lambda r: _one(r.ttft), scale=1000.0, decimals=0,
           json_key="ttft_s", limit_stats=_LATENCY_LIMITS),
    Metric("itl", "Inter-token latency (ms), ITL", "ms", inter_token_latencies, scale=1000.0, json_key="itl_s",
           limit_stats=_LATENCY_LIMITS),
    Metric("tpot", "Time per output token (ms), TPOT", "ms", lambda r: _one(time_per_output_token(r)),
           scale=1000.0, json_key="tpot_s", limit_stats=_LATENCY_LIMITS),
    Metric("tokens_per_s_per_user", "Tokens/s per user", "tok/s", lambda r: _one(tokens_per_s(r)),
           higher_is_better=True, limit_stats=_SPEED_LIMITS),
    Metric("ttfc", "Time to first content token (ms), TTFC", "ms", lambda r: _one(r.ttfc), scale=1000.0,
           decimals=0, json_key="ttfc_s", limit_stats=_LATENCY_LIMITS),
    Metric("reasoning_tokens", "Reasoning tokens per request", "tok",
           lambda r: _one(None if r.reasoning_tokens is None else float(r.reasoning_tokens)), decimals=0,
           limit_stats=_LATENCY_LIMITS),
    Metric("total_tokens_per_s", "Total tokens/s", "tok/s", None, higher_is_better=True),
    Metric("requests_per_s", "Requests/s", "req/s", None, decimals=2, higher_is_better=True),
    Metric("prefix_cache_hit_rate", "Prefix-cache hit rate", "", None, higher_is_better=True, decimals=2),
    Metric("goodput", "Goodput (share of requests within their limits)", "", None, higher_is_better=True,
           decimals=3),
)}
DISTRIBUTIONS = tuple(name for name, m in METRICS.items() if not m.scalar)
SCALARS = tuple(name for name, m in METRICS.items() if m.scalar)

# Run-level metrics: one value per start of the server, not per cell. Each recorded cell carries the
# values of the start it was measured on in `extra["server_start"]` (under `key`), so objectives can
# limit them like any other; gates compare them over the starts of each side.
RUN_METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("startup", "Start-up time (s): launch to ready (/health and /v1/models)", "s", None,
           json_key="startup_s"),
    Metric("first_ttft", "TTFT of the first request after ready (ms)", "ms", None, scale=1000.0, decimals=0,
           json_key="first_ttft_s"),
)}
SERVER_START = "server_start"  # the key of a cell's `extra` that holds the run-level values


def any_metric(name: str) -> Metric:
    """A cell metric or a run-level one (KeyError for neither)."""
    return METRICS[name] if name in METRICS else RUN_METRICS[name]


def metric_named(name: str) -> Metric:
    """The registry entry; ConfigError naming the bad name and the choices."""
    try:
        return METRICS[name]
    except KeyError:
        raise ConfigError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}") from None


def check_stat(m: Metric, stat: str | None, allowed: Sequence[str] = STATS) -> str | None:
    """`stat` if `m` has it (None for a scalar); ConfigError otherwise."""
    if m.scalar:
        return None
    if stat not in allowed:
        raise ConfigError(f"unknown statistic {stat!r} for {m.name}; expected one of {', '.join(allowed)}")
    return stat


def value_of(stats: Any, name: str, stat: str | None = "mean") -> float | None:
    """One statistic of a cell's statistics (`results.CellStats`) in SI units; None when undefined."""
    m = metric_named(name)
    stat = check_stat(m, stat)
    value = getattr(stats, name, None)
    if value is None:
        return None
    return float(value) if m.scalar else float(getattr(value, str(stat)))


# ------------------------------------------------------------------- how users name a statistic

_LATENCY = tuple(n for n, m in METRICS.items() if m.unit in ("s", "ms"))
_LATENCY_KEY = re.compile(rf"^({'|'.join(_LATENCY)})_({'|'.join(_LATENCY_LIMITS)})_(s|ms)$")
_SPEED_KEY = re.compile(rf"^tokens_per_s_per_user_({'|'.join(_SPEED_LIMITS)})$")
_COUNT_KEY = re.compile(rf"^reasoning_tokens_({'|'.join(_LATENCY_LIMITS)})$")
_SCALAR_KEYS = {f"{n}{suffix}": n for n in SCALARS for suffix in ("", "_min")}
_RUN_KEY = re.compile(rf"^({'|'.join(RUN_METRICS)})_(s|ms)$")
ERROR_RATE_KEY = "error_rate_max"

OBJECTIVE_KEY_HELP = (f"{'|'.join(_LATENCY)} _ {'|'.join(_LATENCY_LIMITS)} _ s|ms (upper limits); "
                      f"reasoning_tokens_{'|'.join(_LATENCY_LIMITS)} (upper limits); "
                      f"tokens_per_s_per_user_{'|'.join(_SPEED_LIMITS)}, {', '.join(SCALARS)} (lower limits); "
                      f"{'|'.join(RUN_METRICS)} _ s|ms (upper limits on the server's start); {ERROR_RATE_KEY}")


@dataclass(frozen=True, slots=True)
class LimitKey:
    """What an objective key such as `e2e_p95_s` or `tokens_per_s_per_user_min` names."""

    metric: str  # a METRICS name, or "error_rate"
    stat: str | None
    upper: bool  # True: the value must stay at or below the limit
    unit: str  # shown unit: "s", "ms", "tok/s", "req/s", ""
    scale: float = 1.0  # shown value = SI value * scale


def parse_limit_key(key: str) -> LimitKey | None:
    """The metric, statistic, direction and unit an objective key names; None if it names none."""
    if m := _LATENCY_KEY.match(key):
        name, stat, unit = m.groups()
        return LimitKey(name, stat, True, unit, 1000.0 if unit == "ms" else 1.0)
    if m := _SPEED_KEY.match(key):
        return LimitKey("tokens_per_s_per_user", m.group(1), False, "tok/s")
    if m := _COUNT_KEY.match(key):
        return LimitKey("reasoning_tokens", m.group(1), True, "tok")
    if key in _SCALAR_KEYS:
        name = _SCALAR_KEYS[key]
        return LimitKey(name, None, False, METRICS[name].unit)
    if m := _RUN_KEY.match(key):
        name, unit = m.groups()
        return LimitKey(name, None, True, unit, 1000.0 if unit == "ms" else 1.0)
    if key == ERROR_RATE_KEY:
        return LimitKey("error_rate", None, True, "")
    return None


@dataclass(frozen=True, slots=True)
class Gate:
    """A regression gate: `metric` (with `stat` for distributions) may worsen by at most `threshold_pct`."""

    metric: str
    stat: str | None
    threshold_pct: float
    text: str = ""

    @property
    def name(self) -> str:
        """E.g. 'e2e_p95' or 'total_tokens_per_s'."""
        return self.metric if self.stat is None else f"{self.metric}_{self.stat}"

    @property
    def higher_is_better(self) -> bool:
        return any_metric(self.metric).higher_is_better

    @property
    def run_level(self) -> bool:
        """A gate on the server's start (one value per start), not on cells."""
        return self.metric in RUN_METRICS

    def __str__(self) -> str:
        return f"{self.name}:{self.threshold_pct:g}%"


def parse_gate(text: str) -> Gate:
    """Parse 'e2e_p95:10%' (the % is optional); ConfigError naming the text when it is not a gate."""
    name, sep, threshold = text.strip().partition(":")
    if not sep:
        raise ConfigError(f"regression gate {text!r}: expected METRIC_STAT:PERCENT, e.g. e2e_p95:10%")
    name_, stat = _gate_metric(text, name.strip())
    return Gate(name_, stat, _gate_threshold(text, threshold), text.strip())


def _gate_metric(text: str, name: str) -> tuple[str, str | None]:
    if name in SCALARS or name in RUN_METRICS:
        return name, None
    base, _, stat = name.rpartition("_")
    if base in DISTRIBUTIONS and stat in GATE_STATS:
        return base, stat
    choices = [f"{m}_{{{','.join(GATE_STATS)}}}" for m in DISTRIBUTIONS] + list(SCALARS) + list(RUN_METRICS)
    raise ConfigError(f"regression gate {text!r}: unknown metric {name!r}; expected one of {', '.join(choices)}")


def _gate_threshold(text: str, raw: str) -> float:
    raw = raw.strip().removesuffix("%").strip()
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"regression gate {text!r}: threshold {raw!r} is not a number of percent") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"regression gate {text!r}: threshold must be a positive percentage, not {raw!r}")
    return value
