"""What the server said it did during a cell: its Prometheus `/metrics`, scraped before and after.

`ServerMetricsObserver` is a cell observer (name "server_metrics"). It scrapes `GET /metrics` before
and after each cell and records the *deltas* (so earlier cells and warm-up do not leak in):

- counters: prompt tokens, generation tokens, successful requests, preemptions, prefix-cache queries
  and hits (tokens; `prefix_cache_hit_rate` = hits / queries over the cell, None without queries), and
  vLLM's own estimates of bytes read and FLOPs per GPU where it exports them (None where it does not);
- histograms (count, sum, mean = sum/count, and p50/p90/p99 interpolated inside the buckets the way
  Prometheus' `histogram_quantile` does, so a quantile is only as fine as the bucket edges):
  TTFT, E2E latency, inter-token latency, time per output token, queue time;
- gauges: peaks of KV-cache usage (a fraction 0..1, despite vLLM's name `..._perc`), running and
  waiting requests. Peaks need sampling *during* the cell, so a background thread polls `/metrics`
  every `poll_interval_s` (0 disables it; the before/after scrapes still count).

Series are summed over label sets (engines, finished_reason, model_name). Metric names vary across
vLLM versions: each quantity lists its variants, first present wins (`vllm:gpu_cache_usage_perc`
before 0.10, counters with or without `_total`, `vllm:time_per_output_token_seconds` before
`vllm:inter_token_latency_seconds`).

Cross-checks, each disagreement a reason in the section's `invalid` list (the runner then marks the
cell invalid: the tool cannot vouch for it):
- server generation-token delta == the sum of `usage.completion_tokens` over the cell's records
  (successful ones and failed ones that reported usage). Anything else means other traffic on the
  server or lost usage;
- client E2E and TTFT means vs the server's histogram means: the client sees every byte after the
  server stamped it, so 0 <= client - server <= `Tolerance.limit(server)` (E2E 50 ms + 10 %, TTFT
  100 ms + 50 %, settable; see `Tolerance` for why the client may lie above the server at all).

A server without `/metrics` (HTTP error, connection error, not Prometheus text) is noted once: the
first `after_cell` returns `{"available": False, "reason": ...}`, later ones None; nothing raises.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..control import Control
from ..results import CellResult, CellSpec

# Each quantity: the names it has had across vLLM versions, first present wins.
COUNTERS: dict[str, tuple[str, ...]] = {
    "prompt_tokens": ("vllm:prompt_tokens_total", "vllm:prompt_tokens"),
    "generation_tokens": ("vllm:generation_tokens_total", "vllm:generation_tokens"),
    "request_success": ("vllm:request_success_total", "vllm:request_success"),
    "preemptions": ("vllm:num_preemptions_total", "vllm:num_preemptions"),
    # vLLM's own roofline estimate: compare with physical.py's bytes per step. Exported by 0.32 but
    # it stays 0 on the CPU build (measured), so a 0 here means "not estimated", not "nothing read".
    "estimated_read_bytes_per_gpu": ("vllm:estimated_read_bytes_per_gpu_total",),
    "estimated_flops_per_gpu": ("vllm:estimated_flops_per_gpu_total",),
    # Prompt tokens looked up in the prefix cache, and those found (vLLM v1); their ratio over the cell
    # is its `prefix_cache_hit_rate`.
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),
}
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "ttft_s": ("vllm:time_to_first_token_seconds",),
    "e2e_s": ("vllm:e2e_request_latency_seconds",),
    "itl_s": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "tpot_s": ("vllm:request_time_per_output_token_seconds",),
    "queue_time_s": ("vllm:request_queue_time_seconds",),
}
GAUGES: dict[str, tuple[str, ...]] = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "num_requests_running": ("vllm:num_requests_running",),
    "num_requests_waiting": ("vllm:num_requests_waiting",),
}
QUANTILES = (0.5, 0.9, 0.99)
MAX_POLLS = 20_000  # bounds one cell's poll thread (about 2.8 h at 0.5 s)

Labels = tuple[tuple[str, str], ...]


# -- the parser ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrape:
    """A parsed `/metrics` page: sample values by (name, labels), and the declared family types."""

    samples: dict[tuple[str, Labels], float]
    types: dict[str, str] = field(default_factory=dict)

    def names(self) -> set[str]:
        """Every sample name present."""
        return {name for name, _ in self.samples}


def parse_prometheus(text: str) -> Scrape:
    """Parse the Prometheus text exposition format with prometheus_client's parser (a vLLM dependency).

    Raises ValueError on text that is not Prometheus, so an HTML error page is not mistaken for an
    empty metrics page.
    """
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415 - only when scraping

    samples: dict[tuple[str, Labels], float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        # The parser names a counter family without its `_total`; the samples keep their full names.
        types[family.name + ("_total" if family.type == "counter" else "")] = family.type
        types.setdefault(family.name, family.type)
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return Scrape(samples, types)


# -- reading quantities out of a scrape ---------------------------------------------------------


@dataclass(frozen=True)
class Histogram:
    """A histogram summed over its label sets: cumulative bucket counts by upper edge, count and sum."""

    buckets: tuple[tuple[float, float], ...]  # (le, cumulative count), sorted, ending with +Inf
    count: float
    sum: float

    def __sub__(self, other: Histogram) -> Histogram:
        before = dict(other.buckets)
        return Histogram(
            buckets=tuple((le, c - before.get(le, 0.0)) for le, c in self.buckets),
            count=self.count - other.count,
            sum=self.sum - other.sum,
        )

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None

    def quantile(self, q: float) -> float | None:
        """Prometheus `histogram_quantile`: linear inside the bucket; the top finite edge for +Inf."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower  # the answer lies above the last finite edge: report that edge
                width = cumulative - below
                return lower + (le - lower) * ((rank - below) / width if width > 0 else 1.0)
            lower, below = le, cumulative
        return lower

    def summary(self) -> dict[str, float | None]:
        """count, sum, mean and the QUANTILES, for the report."""
        out: dict[str, float | None] = {"count": self.count, "sum": self.sum, "mean": self.mean}
        for q in QUANTILES:
            out[f"p{round(q * 100)}"] = self.quantile(q)
        return out


def first_present(scrape: Scrape, variants: Sequence[str], suffix: str = "") -> str | None:
    """The first name among `variants` (with `suffix`) that the scrape has samples for."""
    present = scrape.names()
    return next((v for v in variants if v + suffix in present), None)


def scalar(scrape: Scrape, variants: Sequence[str]) -> float | None:
    """A counter or gauge summed over all its label sets; None when no variant is present."""
    name = first_present(scrape, variants)
    if name is None:
        return None
    return math.fsum(v for (n, _), v in scrape.samples.items() if n == name)


def histogram(scrape: Scrape, variants: Sequence[str]) -> Histogram | None:
    """A histogram summed over its label sets (buckets merged by edge); None when absent."""
    base = first_present(scrape, variants, "_count")
    if base is None:
        return None
    buckets: dict[float, float] = {}
    for (n, labels), v in scrape.samples.items():
        if n == base + "_bucket":
            le = float(dict(labels).get("le", "+Inf"))
            buckets[le] = buckets.get(le, 0.0) + v
    return Histogram(
        buckets=tuple(sorted(buckets.items())),
        count=scalar(scrape, [base + "_count"]) or 0.0,
        sum=scalar(scrape, [base + "_sum"]) or 0.0,
    )


def gauges(scrape: Scrape) -> dict[str, float]:
    """The current value of every GAUGES quantity the scrape has."""
    out = {}
    for key, variants in GAUGES.items():
        v = scalar(scrape, variants)
        if v is not None:
            out[key] = v
    return out


def peek_gauges(text: str) -> dict[str, float]:
    """The GAUGES quantities read straight off the page's lines (summed over label sets).

    The poller runs in the measuring process while a cell is running, so it must cost the client's core
    next to nothing: a full parse of vLLM's 50 KB page takes ~8.6 ms with prometheus_client (2.4 ms by
    hand), holding the GIL that the event loop needs; this scan takes well under a millisecond. The
    before/after scrapes, outside the measured window, use the full parser.
    """
    out: dict[str, float] = {}
    for key, variants in GAUGES.items():
        for name in variants:
            values = [_sample_value(line) for line in _lines_of(text, name)]
            present = [v for v in values if v is not None]
            if present:
                out[key] = math.fsum(present)
                break
    return out


def _lines_of(text: str, name: str) -> list[str]:
    """The sample lines of metric `name` (`name{...} v` or `name v`), comments excluded."""
    found, pos = [], text.find(name)
    while pos >= 0:
        start = text.rfind("\n", 0, pos) + 1
        end = text.find("\n", pos)
        line = text[start:end if end >= 0 else len(text)]
        if start == pos and line[len(name):len(name) + 1] in ("{", " "):
            found.append(line)
        pos = text.find(name, end if end >= 0 else len(text))
    return found


def _sample_value(line: str) -> float | None:
    try:
        return float(line.rsplit("}", 1)[-1].split()[0])
    except (ValueError, IndexError):
        return None


# -- deltas and cross-checks --------------------------------------------------------------------


def deltas(before: Scrape, after: Scrape) -> tuple[dict[str, Any], list[str]]:
    """Counter and histogram differences after - before, and warnings for counters that went back."""
    warnings: list[str] = []
    counters: dict[str, float | None] = {}
    for key, variants in COUNTERS.items():
        a, b = scalar(after, variants), scalar(before, variants)
        counters[key] = None if a is None or b is None else a - b
        if counters[key] is not None and counters[key] < 0:  # type: ignore[operator]
            warnings.append(f"server counter {key} went backwards ({b:g} -> {a:g}): the server restarted "
                            "during the cell, so its /metrics deltas cannot be compared")
            counters[key] = None
    hists: dict[str, Any] = {}
    for key, variants in HISTOGRAMS.items():
        ha, hb = histogram(after, variants), histogram(before, variants)
        if ha is not None and hb is not None:
            hists[key] = (ha - hb).summary()
    queries, hits = counters.get("prefix_cache_queries"), counters.get("prefix_cache_hits")
    hit_rate = hits / queries if queries and hits is not None else None
    return {"counters": counters, "histograms": hists, "prefix_cache_hit_rate": hit_rate}, warnings


@dataclass(frozen=True)
class Tolerance:
    """How far the client's mean may lie above the server's own histogram mean before the cell is invalid:
    `abs_s + rel * server`. The client's number includes the HTTP path and vLLM's API server (tokenizing,
    queueing, streaming), which the engine's histograms do not, and which grows with load on a busy CPU;
    a client that stalled or did not start its requests together is far beyond (2x to 100x)."""

    abs_s: float
    rel: float

    def limit(self, server: float) -> float:
        return self.abs_s + self.rel * server


E2E_TOLERANCE = Tolerance(0.05, 0.10)
TTFT_TOLERANCE = Tolerance(0.10, 0.50)


def cross_check(section: dict[str, Any], result: CellResult, *, e2e: Tolerance = E2E_TOLERANCE,
                ttft: Tolerance = TTFT_TOLERANCE) -> list[str]:
    """Why the server's account of the cell and the client's disagree; empty when they agree."""
    reasons = _check_tokens(section, result)
    for key, name, tolerance in (("e2e_s", "E2E", e2e), ("ttft_s", "TTFT", ttft)):
        reasons += _check_latency(section, result, key, name, tolerance)
    return reasons


def _check_tokens(section: dict[str, Any], result: CellResult) -> list[str]:
    server = section["counters"].get("generation_tokens")
    client = sum(r.output_tokens for r in result.records if r.output_tokens is not None)
    if server is None or round(server) == client:
        return []
    return [f"the server generated {server:g} tokens during the cell but the clients' usage sums to "
            f"{client}: other traffic reached the server or usage reports were lost"]


def _client_mean(result: CellResult, key: str) -> float | None:
    values = [r.e2e if key == "e2e_s" else r.ttft for r in result.records if r.ok]
    present = [v for v in values if v is not None]
    return math.fsum(present) / len(present) if present else None


def _check_latency(section: dict[str, Any], result: CellResult, key: str, name: str,
                   tolerance: Tolerance) -> list[str]:
    server = (section["histograms"].get(key) or {}).get("mean")
    client = _client_mean(result, key)
    if server is None or client is None:
        return []
    diff = client - server
    # The server stamps its times before the bytes cross the wire, so the client cannot be earlier; a few
    # ms (or 5 %) of slack absorbs clock reads on both sides.
    if diff < -(0.005 + 0.05 * server):
        return [f"client {name} mean {client * 1e3:.1f} ms is below the server's {server * 1e3:.1f} ms: the "
                "two do not measure the same requests"]
    if diff > tolerance.limit(server):
        return [f"client {name} mean {client * 1e3:.1f} ms exceeds the server's own {server * 1e3:.1f} ms by "
                f"{diff * 1e3:.1f} ms (> {tolerance.abs_s * 1e3:g} ms + {tolerance.rel:.0%}): the client "
                "measured itself, not the server"]
    return []


# -- the observer -------------------------------------------------------------------------------


class MetricsUnavailable(Exception):
    """`/metrics` could not be scraped or parsed."""


class ServerMetricsObserver:
    """Cell observer "server_metrics": /metrics deltas, gauge peaks and cross-checks per cell."""

    name = "server_metrics"

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        poll_interval_s: float = 0.5,
        timeout_s: float = 5.0,
        settle_s: float = 1.0,
        e2e_tolerance: Tolerance = E2E_TOLERANCE,
        ttft_tolerance: Tolerance = TTFT_TOLERANCE,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._control = Control(base_url, api_key, timeout_s=timeout_s, transport=transport)
        self.poll_interval_s = poll_interval_s
        self.settle_s = settle_s
        self._tolerance = (e2e_tolerance, ttft_tolerance)
        self.available = True
        self.unavailable_reason: str | None = None
        self._reported_unavailable = False
        self._before: Scrape | None = None
        self._peaks: dict[str, float] = {}
        self._polls = 0
        self._poll_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def scrape(self) -> Scrape:
        """GET /metrics and parse it; MetricsUnavailable on any failure."""
        try:
            resp = self._control.get("/metrics")
            resp.raise_for_status()
            return parse_prometheus(resp.text)
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsUnavailable(f"GET /metrics failed: {type(exc).__name__}: {exc}") from exc

    # -- observer protocol ---------------------------------------------------------------------

    def before_cell(self, spec: CellSpec) -> None:
        """Scrape the starting point and start polling the gauges."""
        self._stop_polling()
        self._before = None
        if not self.available:
            return
        try:
            self._before = self.scrape()
        except MetricsUnavailable as exc:
            self.available, self.unavailable_reason = False, f"{exc}; server metrics disabled"
            return
        self._peaks = gauges(self._before)
        self._polls = self._poll_errors = 0
        if self.poll_interval_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="llmload-metrics-poll", daemon=True)
            self._thread.start()

    def after_cell(self, result: CellResult) -> dict[str, Any] | None:
        """Stop polling, scrape the end point, return deltas, peaks and warnings."""
        self._stop_polling()
        if not self.available:
            return self._unavailable_once()
        before, self._before = self._before, None
        if before is None:
            return None
        try:
            after = self._settled_scrape(before, result)
        except MetricsUnavailable as exc:
            return {"available": True, "warnings": [f"the closing {exc}; no server metrics for this cell."]}
        return self._section(before, after, result)

    def close(self) -> None:
        """Stop polling and close the HTTP client; safe to call twice."""
        self._stop_polling()
        self._control.close()

    def __enter__(self) -> ServerMetricsObserver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _section(self, before: Scrape, after: Scrape, result: CellResult) -> dict[str, Any]:
        section, problems = deltas(before, after)
        self._fold_peaks(gauges(after))
        section["gauges_peak"] = dict(self._peaks)
        section["polls"] = self._polls
        section["poll_errors"] = self._poll_errors
        # A counter that went back (the server restarted) leaves nothing to compare: invalid too.
        invalid = problems + cross_check(section, result, e2e=self._tolerance[0], ttft=self._tolerance[1])
        return {"available": True, **section, "invalid": invalid}

    def _settled_scrape(self, before: Scrape, result: CellResult) -> Scrape:
        """Scrape again (bounded by settle_s) while the server still lags behind the clients' tokens.

        vLLM records a step's stats just after it hands the tokens to the streams, so a scrape the
        instant the last response ends can miss the last step.
        """
        client_tokens = sum(r.output_tokens for r in result.records if r.output_tokens is not None)
        deadline = time.monotonic() + self.settle_s
        while True:
            after = self.scrape()
            a, b = scalar(after, COUNTERS["generation_tokens"]), scalar(before, COUNTERS["generation_tokens"])
            if a is None or b is None or a - b >= client_tokens or time.monotonic() >= deadline:
                return after
            time.sleep(0.05)

    def _poll(self) -> None:
        for _ in range(MAX_POLLS):
            if self._stop.wait(self.poll_interval_s):
                return
            try:
                response = self._control.get("/metrics")
                response.raise_for_status()
            except httpx.HTTPError:
                self._poll_errors += 1  # a busy server may time out; the before/after scrapes decide
                continue
            self._fold_peaks(peek_gauges(response.text))
            self._polls += 1

    def _fold_peaks(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self._peaks[key] = max(value, self._peaks.get(key, value))

    def _stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # The poll thread may be inside a request; the client's timeout bounds the wait.
            self._thread.join(timeout=self._control.timeout_s + 1.0)
            self._thread = None

    def _unavailable_once(self) -> dict[str, Any] | None:
        if self._reported_unavailable:
            return None
        self._reported_unavailable = True
        return {"available": False, "reason": self.unavailable_reason}
