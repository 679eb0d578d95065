"""The reference study's matrix for the chosen model: every users x prompt-size cell is one test.

A cell passes when every request succeeded with exactly the asked number of prompt and output tokens.
A cell whose prompt does not fit the model's context is the study's "-": reported as skipped with
the server's reason. The study-style table is printed at the end of the session.
"""

from __future__ import annotations

import pytest


def could_not_run(cell) -> bool:
    """The study's "-": the server refused every request as too long for the model's context (HTTP 400)."""
    failed = cell.stats.requests_failed if cell.stats is not None else 0
    return not cell.ok and failed > 0 and cell.errors.get("http_400") == failed


def test_cell(llm_cell):
    if could_not_run(llm_cell):
        pytest.skip(f"could not run (the study's '-'): {llm_cell.error}")
    assert llm_cell.ok, f"cell {llm_cell.label} failed: {llm_cell.error}"
    stats = llm_cell.stats
    assert stats.requests_failed == 0, f"{stats.requests_failed} requests failed: {stats.errors}"
    assert stats.prompt_tokens_mismatches == 0, "prompts were not the asked size (usage.prompt_tokens differs)"
    assert all(r.output_tokens == llm_cell.max_tokens for r in llm_cell.records), "a request stopped early"
