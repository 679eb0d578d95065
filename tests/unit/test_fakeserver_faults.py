"""Every fault the fake server injects becomes the right error kind, and the run goes on."""

from __future__ import annotations

import json
import urllib.request

import pytest

from pytest_llmload.testing.fakeserver import FakeConfig, FakeServer
from pytest_llmload.load.runner import LoadRunner


@pytest.mark.parametrize(("fault", "kind"), [
    ("http_400", "http_400"), ("http_404", "http_404"), ("http_429", "http_429"), ("http_500", "http_5xx"),
    ("malformed_sse", "malformed_sse"), ("no_done", "incomplete_stream"), ("drop", "incomplete_stream"),
    ("error_event", "server_error_event"), ("no_usage", "no_usage"), ("hang", "timeout"),
])
def test_every_other_request_failing_leaves_a_working_cell(llm_fake_server: FakeServer, fault: str, kind: str) -> None:
    llm_fake_server.configure(fault=fault, fault_every=2)
    with LoadRunner(llm_fake_server.base_url, "fake-model", request_timeout_s=1.0, progress=False) as runner:
        cell = runner.run_cell_kw(6, 16, 10)
    assert cell.ok and cell.error is None
    assert cell.errors == {kind: 3}
    assert cell.stats is not None and cell.stats.requests_ok == 3
    failed = [r for r in cell.records if not r.ok]
    assert all(r.error == kind and r.error_detail for r in failed)


@pytest.mark.parametrize(("fault", "words"), [("http_429", "http_429"), ("error_event", "server_error_event"),
                                              ("hang", "timeout")])
def test_a_cell_where_everything_fails_says_why_and_the_next_one_runs(llm_fake_server: FakeServer, fault: str,
                                                                      words: str) -> None:
    llm_fake_server.configure(fault=fault)
    with LoadRunner(llm_fake_server.base_url, "fake-model", request_timeout_s=0.5, progress=False) as runner:
        bad = runner.run_cell_kw(3, 16, 5)
        llm_fake_server.configure(fault=None)
        good = runner.run_cell_kw(3, 16, 5)
    assert not bad.ok and bad.error is not None and words in bad.error
    assert len(bad.records) == 3 and bad.stats is not None and bad.stats.requests_failed == 3
    assert good.ok


def test_slow_first_byte_shows_in_ttft(llm_fake_server: FakeServer) -> None:
    llm_fake_server.configure(fault="slow_first_byte", slow_first_byte_ms=300)
    with LoadRunner(llm_fake_server.base_url, "fake-model", progress=False) as runner:
        cell = runner.run_cell_kw(2, 16, 5)
    assert cell.ok and cell.ttft is not None and cell.ttft.min >= 0.3


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read()


def test_side_endpoints(llm_fake_server: FakeServer) -> None:
    assert _get(llm_fake_server.base_url + "/health")[0] == 200
    models = json.loads(_get(llm_fake_server.base_url + "/v1/models")[1])
    assert models["data"][0]["id"] == "fake-model"
    metrics = _get(llm_fake_server.base_url + "/metrics")[1].decode()
    assert "vllm:num_requests_running" in metrics and "vllm:generation_tokens_total" in metrics
    req = urllib.request.Request(llm_fake_server.base_url + "/tokenize", data=json.dumps(
        {"model": "fake-model", "prompt": "abcdefgh ij"}).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert json.loads(r.read())["count"] == 4  # BOS, abcd, efgh, ij


def test_server_truth_is_recorded() -> None:
    with FakeServer(FakeConfig(ttft_ms=30, itl_ms=5)) as srv, \
            LoadRunner(srv.base_url, "fake-model", progress=False) as runner:
        runner.run_cell_kw(2, 16, 4)
        truth = json.loads(_get(srv.base_url + "/fake/truth")[1])
    assert len(truth) == 2
    for t in truth:
        assert len(t["sends"]) == 4 and t["sends"][0] - t["recv"] >= 0.029 and t["done"] >= t["sends"][-1]
