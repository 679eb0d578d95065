"""The server-metrics observer against a real vLLM: its /metrics deltas agree with what the client saw."""

from __future__ import annotations

import json
import time

import httpx

from pytest_llmload.observe.server_metrics import ServerMetricsObserver
from pytest_llmload.results import CellResult, CellSpec, RequestRecord
from pytest_llmload.server.launch import VLLMServer

SPEC = CellSpec(users=2, prompt_tokens=31)


def cell(*records: RequestRecord) -> CellResult:
    return CellResult(users=len(records), prompt_tokens=31, max_tokens=100, ok=True, records=records)


def _stream_completion(client: httpx.Client, server: VLLMServer, index: int) -> RequestRecord:
    """One streamed completion of 10 tokens, timed the way the client module times it."""
    body = {"model": server.model, "prompt": f"Request number {index}", "max_tokens": 10, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True}}
    start, first, usage = time.perf_counter(), None, None
    with client.stream("POST", f"{server.base_url}/v1/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text") and first is None:
                first = time.perf_counter()
            usage = chunk.get("usage") or usage
    return RequestRecord(index=index, start=0.0, end=time.perf_counter() - start,
                         first_token=None if first is None else first - start,
                         output_tokens=usage["completion_tokens"], prompt_tokens=usage["prompt_tokens"])


def test_real_vllm_metrics_agree_with_the_client(tiny_server: VLLMServer) -> None:
    with ServerMetricsObserver(tiny_server.base_url, poll_interval_s=0.2) as obs, \
            httpx.Client(trust_env=False, timeout=60) as client:
        _stream_completion(client, tiny_server, -1)  # warm-up: the first request after start is slow
        obs.before_cell(SPEC)
        records = tuple(_stream_completion(client, tiny_server, i) for i in range(2))
        out = obs.after_cell(cell(*records))
    assert out["available"] is True, out
    assert out["counters"]["generation_tokens"] == 20
    assert out["counters"]["prompt_tokens"] == sum(r.prompt_tokens or 0 for r in records)
    assert out["counters"]["request_success"] == 2
    for key in ("ttft_s", "e2e_s", "itl_s", "queue_time_s"):
        assert out["histograms"][key]["count"] > 0, key
    assert set(out["gauges_peak"]) == {"kv_cache_usage", "num_requests_running", "num_requests_waiting"}
    assert out["counters"]["estimated_read_bytes_per_gpu"] is not None  # exported (0 on the CPU build)
    assert not [w for w in out["invalid"] if "generated" in w or "went backwards" in w]
    # The client sees the first token after the server stamped it. (Whether the gap stays within
    # 50 ms + 20 % depends on the load on this shared 2-core machine, so only the order is asserted.)
    client_ttft = sum(r.ttft or 0.0 for r in records) / len(records)
    assert client_ttft >= out["histograms"]["ttft_s"]["mean"] - 0.005
