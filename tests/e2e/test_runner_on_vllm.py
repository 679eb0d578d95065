"""The load runner against a real vLLM on the CPU: exact prompt sizes, usage-based token counts."""

from __future__ import annotations

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
