"""Objectives from configuration: `--llm-slo-file deploy.toml` ([[slo]] tables) or `llm_slo` ini lines.

Each objective is checked against the matrix cells it selects (cells outside the matrix are measured
on demand). Without any configured objective this test is skipped.
"""

from __future__ import annotations

import pytest


def test_configured_slo(llm_slos, llm_load, llm_settings):
    if not llm_slos:
        pytest.skip("no objectives configured (--llm-slo-file or the llm_slo ini option)")
    for slo in llm_slos:
        if slo.min_users:
            capacity = llm_load.max_users(slo, prompt_tokens=min(slo.prompt_tokens or llm_settings.prompt_tokens))
            capacity.assert_at_least(slo.min_users)
            continue
        users = sorted(slo.users or llm_settings.users)
        prompts = sorted(slo.prompt_tokens or llm_settings.prompt_tokens)
        for p in prompts:
            for u in users:
                llm_load.check(slo, llm_load.cached(users=u, prompt_tokens=p, max_tokens=slo.max_tokens))
