"""The /metrics parser on vLLM-shaped text, deltas, quantiles, gauge peaks and the cross-checks."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from pytest_llmload.results import CellResult, CellSpec, RequestRecord
from pytest_llmload.observe.server_metrics import (
    gauges,
    peek_gauges,
    Histogram,
    ServerMetricsObserver,
    deltas,
    histogram,
    parse_prometheus,
    scalar,
)

SPEC = CellSpec(users=2, prompt_tokens=31)
L = 'engine="0",model_name="tiny"'
TTFT_EDGES = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0)


def hist(name: str, observations: list[float], edges=TTFT_EDGES, labels: str = L) -> str:
    """A histogram family as prometheus_client writes it (vLLM's exporter): _sum, _bucket..., _count."""
    lines = [f"# HELP {name} Histogram of {name}.", f"# TYPE {name} histogram",
             f"{name}_sum{{{labels}}} {sum(observations)!r}"]
    for le in (*edges, float("inf")):
        n = sum(1 for o in observations if o <= le)
        le_text = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'{name}_bucket{{engine="0",le="{le_text}",model_name="tiny"}} {float(n)!r}')
    lines.append(f"{name}_count{{{labels}}} {float(len(observations))!r}")
    lines.append(f"{name}_created{{{labels}}} 1.7543210e+09")
    return "\n".join(lines)


def vllm_metrics(*, prompt=0.0, gen=0.0, success=0.0, preempt=0.0, running=0.0, waiting=0.0, kv=0.0,
                 ttft=(), e2e=(), itl=(), queue=(), kv_name="vllm:kv_cache_usage_perc") -> str:
    """Text resembling vLLM 0.32's /metrics for a model served as "tiny"."""
    return "\n".join([
        "# HELP python_gc_objects_collected_total Objects collected during gc",
        "# TYPE python_gc_objects_collected_total counter",
        'python_gc_objects_collected_total{generation="0"} 12345.0',
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{{{L}}} {running}",
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{{{L}}} {waiting}",
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"{kv_name}{{{L}}} {kv}",
        "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.",
        "# TYPE vllm:num_preemptions_total counter",
        f"vllm:num_preemptions_total{{{L}}} {preempt}",
        f"vllm:num_preemptions_created{{{L}}} 1.7543210e+09",
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
        "# TYPE vllm:prompt_tokens_total counter",
        f"vllm:prompt_tokens_total{{{L}}} {prompt}",
        "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
        "# TYPE vllm:generation_tokens_total counter",
        f"vllm:generation_tokens_total{{{L}}} {gen}",
        "# HELP vllm:request_success_total Count of successfully processed requests.",
        "# TYPE vllm:request_success_total counter",
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="tiny"} 1.0',
        f'vllm:request_success_total{{engine="0",finished_reason="length",model_name="tiny"}} {success - 1}',
        'vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny"} 0.0',
        hist("vllm:time_to_first_token_seconds", list(ttft)),
        hist("vllm:e2e_request_latency_seconds", list(e2e), edges=(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0)),
        hist("vllm:inter_token_latency_seconds", list(itl)),
        hist("vllm:request_queue_time_seconds", list(queue), edges=(0.3, 0.5, 0.8, 1.0, 1.5)),
        "",
    ])


BEFORE = dict(prompt=50.0, gen=400.0, success=5.0, ttft=[0.05] * 4, e2e=[1.2] * 4, itl=[0.01] * 396,
              queue=[0.0] * 4)
# The cell adds two requests of 100 tokens, TTFT 0.08 and 0.12 s (mean 0.1), one preemption.
AFTER = dict(prompt=112.0, gen=600.0, success=7.0, preempt=1.0, ttft=[0.05] * 4 + [0.08, 0.12],
             e2e=[1.2] * 4 + [1.1, 1.3], itl=[0.01] * 594, queue=[0.0] * 6)


def cell(*records: RequestRecord) -> CellResult:
    return CellResult(users=len(records), prompt_tokens=31, max_tokens=100, ok=True, records=records)


def rec(i: int, ttft: float | None = 0.1, tokens: int | None = 100, error: str | None = None) -> RequestRecord:
    return RequestRecord(index=i, start=0.0, end=1.3, first_token=None if ttft is None else ttft,
                         output_tokens=tokens, error=error)


# -- parser -------------------------------------------------------------------------------------


def test_parse_vllm_text():
    scrape = parse_prometheus(vllm_metrics(**AFTER))
    assert scrape.types["vllm:time_to_first_token_seconds"] == "histogram"
    assert scrape.types["vllm:generation_tokens_total"] == "counter"
    assert scalar(scrape, ["vllm:generation_tokens_total"]) == 600
    assert scalar(scrape, ["vllm:request_success_total"]) == 7  # summed over finished_reason
    assert scalar(scrape, ["vllm:nope"]) is None
    h = histogram(scrape, ["vllm:time_to_first_token_seconds"])
    assert h.count == 6 and h.sum == pytest.approx(0.4)
    assert h.buckets[-1] == (float("inf"), 6.0) and dict(h.buckets)[0.06] == 4


def test_parse_escapes_timestamps_and_special_values():
    text = '\n'.join([
        'a{path="C:\\\\x",q="say \\"hi\\", then go",n="l1\\nl2"} 1.5 1700000000000',
        "b +Inf", "c NaN", 'd{le="+Inf"} -3e-2', "   ", "# a free comment",
    ])
    s = parse_prometheus(text)
    labels = dict(next(lbl for (n, lbl) in s.samples if n == "a"))
    assert labels == {"path": "C:\\x", "q": 'say "hi", then go', "n": "l1\nl2"}
    assert s.samples[("a", tuple(sorted(labels.items())))] == 1.5
    assert s.samples[("b", ())] == float("inf") and s.samples[("d", (("le", "+Inf"),))] == -0.03


@pytest.mark.parametrize("text", ["<html><body>Not Found</body></html>", "vllm:x{a=1} 2"])
def test_parse_rejects_what_is_not_prometheus(text):
    with pytest.raises(ValueError):
        parse_prometheus(text)


def test_quantiles_interpolate_inside_buckets_like_prometheus():
    h = Histogram(buckets=((0.1, 2.0), (0.5, 6.0), (1.0, 10.0), (float("inf"), 10.0)), count=10, sum=5.0)
    assert h.quantile(0.5) == pytest.approx(0.4)  # rank 5 in (0.1, 0.5]: 0.1 + 0.4 * 3/4
    assert h.quantile(0.9) == pytest.approx(0.875)
    assert h.quantile(0.99) == pytest.approx(0.9875)
    assert h.mean == 0.5
    above = Histogram(buckets=((0.1, 0.0), (float("inf"), 4.0)), count=4, sum=8.0)
    assert above.quantile(0.5) == 0.1  # beyond the last finite edge: that edge
    assert Histogram(buckets=(), count=0, sum=0).quantile(0.5) is None


def test_deltas_of_counters_and_histograms():
    section, warnings = deltas(parse_prometheus(vllm_metrics(**BEFORE)), parse_prometheus(vllm_metrics(**AFTER)))
    assert warnings == []
    assert section["counters"] == {"prompt_tokens": 62, "generation_tokens": 200, "request_success": 2,
                                   "preemptions": 1, "estimated_read_bytes_per_gpu": None,
                                   "estimated_flops_per_gpu": None, "prefix_cache_queries": None,
                                   "prefix_cache_hits": None}
    assert section["prefix_cache_hit_rate"] is None
    ttft = section["histograms"]["ttft_s"]
    assert ttft["count"] == 2 and ttft["mean"] == pytest.approx(0.1)
    assert 0.06 < ttft["p50"] <= 0.1 and 0.1 < ttft["p99"] <= 0.25  # only as fine as the buckets
    assert section["histograms"]["itl_s"]["count"] == 198
    assert section["histograms"]["e2e_s"]["mean"] == pytest.approx(1.2)
    assert section["histograms"]["queue_time_s"]["count"] == 2
    assert "tpot_s" not in section["histograms"]  # not exported by this version


def test_a_counter_that_went_back_is_a_warning():
    section, warnings = deltas(parse_prometheus(vllm_metrics(**AFTER)), parse_prometheus(vllm_metrics(**BEFORE)))
    assert section["counters"]["generation_tokens"] is None
    assert any("went backwards" in w and "cannot be compared" in w for w in warnings)


def test_older_metric_names():
    old = ("# TYPE vllm:gpu_cache_usage_perc gauge\nvllm:gpu_cache_usage_perc 0.25\n"
           "vllm:generation_tokens 10\n" + hist("vllm:time_per_output_token_seconds", [0.02, 0.03]))
    before = parse_prometheus("vllm:generation_tokens 4\n" + hist("vllm:time_per_output_token_seconds", []))
    section, _ = deltas(before, parse_prometheus(old))
    assert section["counters"]["generation_tokens"] == 6
    assert section["histograms"]["itl_s"]["count"] == 2
    from pytest_llmload.observe.server_metrics import gauges
    assert gauges(parse_prometheus(old)) == {"kv_cache_usage": 0.25}


# -- the observer against a scripted /metrics endpoint ------------------------------------------


class Endpoint:
    """A MockTransport whose /metrics answers the text (or status, or exception) currently set."""

    def __init__(self, text: str = "") -> None:
        self.text, self.status = text, 200
        self.exc: Exception | None = None
        self.queue: list[str] = []  # answered first, one per request
        self.requests = 0
        self.auth: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        self.auth.append(request.headers.get("authorization"))
        assert request.url.path == "/metrics"
        if self.exc is not None:
            raise self.exc
        return httpx.Response(self.status, text=self.queue.pop(0) if self.queue else self.text)


def observer(endpoint: Endpoint, **kw) -> ServerMetricsObserver:
    kw.setdefault("poll_interval_s", 0)
    kw.setdefault("settle_s", 0)
    return ServerMetricsObserver("http://127.0.0.1:1", transport=httpx.MockTransport(endpoint), **kw)


def test_observer_deltas_peaks_and_no_warnings_when_client_and_server_agree():
    ep = Endpoint(vllm_metrics(**BEFORE))
    with observer(ep, poll_interval_s=0.01, api_key="sk-test") as obs:
        obs.before_cell(SPEC)
        ep.text = vllm_metrics(**BEFORE, running=2, waiting=3, kv=0.4)  # what the polls see mid-cell
        deadline = time.monotonic() + 5
        while obs._polls < 2 and time.monotonic() < deadline:  # bounded wait for two polls
            time.sleep(0.01)
        ep.text = vllm_metrics(**AFTER)
        out = obs.after_cell(cell(rec(0, ttft=0.09), rec(1, ttft=0.13)))
    assert out["available"] and out["invalid"] == []
    assert out["counters"]["generation_tokens"] == 200
    assert out["gauges_peak"] == {"kv_cache_usage": 0.4, "num_requests_running": 2, "num_requests_waiting": 3}
    assert out["polls"] >= 2 and out["poll_errors"] == 0
    assert set(ep.auth) == {"Bearer sk-test"}
    assert not [t for t in threading.enumerate() if t.name == "llmload-metrics-poll"]


def test_token_mismatch_makes_the_cell_invalid():
    ep = Endpoint(vllm_metrics(**BEFORE))
    obs = observer(ep)
    obs.before_cell(SPEC)
    ep.text = vllm_metrics(**AFTER)
    # The client saw 150 tokens (one usage lost to a timeout) where the server generated 200.
    out = obs.after_cell(cell(rec(0), rec(1, tokens=50), rec(2, ttft=None, tokens=None, error="timeout")))
    [reason] = [r for r in out["invalid"] if "generated" in r]
    assert "200" in reason and "150" in reason and "other traffic" in reason
    obs.close()


def test_failed_requests_with_usage_count_in_the_token_check():
    ep = Endpoint(vllm_metrics(**BEFORE))
    obs = observer(ep)
    obs.before_cell(SPEC)
    ep.text = vllm_metrics(**AFTER)
    out = obs.after_cell(cell(rec(0, ttft=0.1), rec(1, ttft=None, tokens=100, error="incomplete_stream")))
    assert not [w for w in out["invalid"] if "generated" in w]
    obs.close()


@pytest.mark.parametrize("client_ttfts, fragment", [
    ((0.30, 0.34), "TTFT mean 320.0 ms exceeds the server's own 100.0 ms"),  # 0.22 s > 0.1 s + 50 % of 0.1 s
    ((0.05, 0.05), "TTFT mean 50.0 ms is below the server's"),  # the client cannot see the token first
])
def test_ttft_disagreement_makes_the_cell_invalid(client_ttfts, fragment):
    ep = Endpoint(vllm_metrics(**BEFORE))
    obs = observer(ep)
    obs.before_cell(SPEC)
    ep.text = vllm_metrics(**AFTER)
    out = obs.after_cell(cell(*(rec(i, ttft=t) for i, t in enumerate(client_ttfts))))
    assert len(out["invalid"]) == 1 and fragment in out["invalid"][0]
    obs.close()


@pytest.mark.parametrize("client_end, invalid", [(1.36, False), (1.40, True)])
def test_e2e_beyond_the_tolerance_makes_the_cell_invalid(client_end, invalid):
    """The server's E2E mean is 1.2 s; the client may lie up to 50 ms + 10 % (0.17 s) above it."""
    ep = Endpoint(vllm_metrics(**BEFORE))
    obs = observer(ep)
    obs.before_cell(SPEC)
    ep.text = vllm_metrics(**AFTER)
    records = [RequestRecord(index=i, start=0.0, end=client_end, first_token=0.1, output_tokens=100) for i in range(2)]
    out = obs.after_cell(cell(*records))
    assert bool(out["invalid"]) is invalid
    if invalid:
        assert "E2E mean 1400.0 ms exceeds the server's own 1200.0 ms" in out["invalid"][0]
    obs.close()


def test_settle_rescrapes_while_the_server_lags_behind_the_clients():
    ep = Endpoint(vllm_metrics(**BEFORE))
    obs = observer(ep, settle_s=5)
    obs.before_cell(SPEC)
    lagging = vllm_metrics(**dict(AFTER, gen=590.0))  # the last step's tokens not yet counted
    ep.queue = [lagging, lagging]
    ep.text = vllm_metrics(**AFTER)
    out = obs.after_cell(cell(rec(0), rec(1)))
    assert out["counters"]["generation_tokens"] == 200 and out["invalid"] == []
    assert ep.requests == 4
    obs.close()


@pytest.mark.parametrize("status, exc, fragment", [
    (404, None, "404"),
    (200, httpx.ConnectError("connection refused"), "ConnectError"),
])
def test_a_server_without_metrics_is_noted_once_then_skipped(status, exc, fragment):
    ep = Endpoint("")
    ep.status, ep.exc = status, exc
    obs = observer(ep, poll_interval_s=0.01)
    obs.before_cell(SPEC)
    first = obs.after_cell(cell(rec(0)))
    assert first["available"] is False and fragment in first["reason"]
    obs.before_cell(SPEC)
    assert obs.after_cell(cell(rec(0))) is None
    assert ep.requests == 1  # no more scrapes once known to be unavailable
    obs.close()


def test_a_failed_closing_scrape_is_a_warning_for_that_cell_only():
    ep = Endpoint(vllm_metrics(**BEFORE))
    obs = observer(ep)
    obs.before_cell(SPEC)
    ep.exc = httpx.ReadTimeout("busy")
    out = obs.after_cell(cell(rec(0)))
    assert out["available"] is True and "no server metrics for this cell" in out["warnings"][0]
    ep.exc = None
    obs.before_cell(SPEC)
    ep.text = vllm_metrics(**AFTER)
    assert obs.after_cell(cell(rec(0), rec(1)))["counters"]["generation_tokens"] == 200
    obs.close()


# -- a real vLLM --------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [
    vllm_metrics(**BEFORE, running=2, waiting=3, kv=0.4),
    vllm_metrics(**AFTER, kv_name="vllm:gpu_cache_usage_perc"),
    "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{engine=\"0\"} 1\nvllm:num_requests_running{engine=\"1\"} 2\n",
    "",
])
def test_the_pollers_line_scan_reads_the_gauges_the_full_parser_reads(page):
    """The poller scans lines instead of parsing the page (it runs on the client's core during a cell)."""
    assert peek_gauges(page) == gauges(parse_prometheus(page))
