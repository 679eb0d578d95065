"""The load runner against a real vLLM on the CPU: exact prompt sizes, usage-based token counts."""

from __future__ import annotations

import asyncio

import pytest

from pytest_llmload.load.client import StreamProtocol, stream_once
from pytest_llmload.load.runner import LoadRunner
from pytest_llmload.server.launch import VLLMServer


def test_real_vllm_tiny_model_exact_sizes(tiny_server: VLLMServer) -> None:
    """End to end against the real vLLM on CPU: usage-based tokens, exact prompt sizes, no errors."""
    with LoadRunner(tiny_server.base_url, tiny_server.model, progress=False, request_timeout_s=300,
                    server_status=tiny_server.returncode, log_tail=tiny_server.log_tail) as runner:
        cells = runner.run_matrix([4], [31, 296], max_tokens=20)
    # chat: /tokenize applies the chat template, so the templated prompt is exactly P tokens
    with LoadRunner(tiny_server.base_url, tiny_server.model, api="chat", progress=False,
                    request_timeout_s=300) as runner:
        cells.append(runner.run_cell_kw(2, 64, 20))
    for cell in cells:
        assert cell.ok, cell.error
        assert cell.errors == {}
        for r in cell.records:
            assert r.prompt_tokens == r.expected_prompt_tokens == cell.prompt_tokens
            assert r.output_tokens == 20 and r.chunk_times and r.ttft is not None
        assert cell.stats is not None and cell.stats.prompt_tokens_mismatches == 0


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_real_vllm_token_chunks_take_the_template_path(tiny_server: VLLMServer, api: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's token chunks of one stream differ only in their text, so after the first one the client
    recognises them by its per-stream template, not by the regex check: the cheaper event applies to the
    real server, not only to the fake one (a change in vLLM's chunk format shows up here)."""
    full_checks: list[int] = []
    real_check = StreamProtocol._plain_token_chunk

    def counted(self: StreamProtocol, data: bytes, start: int, end: int) -> bool:
        full_checks.append(end - start)
        return real_check(self, data, start, end)

    monkeypatch.setattr(StreamProtocol, "_plain_token_chunk", counted)
    rec = asyncio.run(stream_once(tiny_server.base_url, tiny_server.model, "one two three", 40, api=api,
                                  timeout=300))
    assert rec.error is None and rec.output_tokens == 40
    assert len(rec.chunk_times) >= 30  # tiny's detokenised text can merge a few tokens into one chunk
    # The first token chunk makes the template; a chunk whose text has an escape (a quote, a newline)
    # is checked in full, as is the last one (finish_reason): a handful, not one per token.
    assert len(full_checks) <= 2 + len(rec.chunk_times) // 4, (len(full_checks), len(rec.chunk_times))
