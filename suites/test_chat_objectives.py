"""The study's conclusions as objectives of a chat service (thresholds: `chat_objectives` in conftest.py)."""

from __future__ import annotations

import pytest

from pytest_llmload.study import STUDY_CHAT_PROMPTS


@pytest.mark.parametrize("prompt_tokens", STUDY_CHAT_PROMPTS)
def test_time_to_resolve_at_32_users(llm_load, chat_objectives, prompt_tokens):
    if prompt_tokens not in chat_objectives.latency_prompts:
        pytest.skip(f"the study's configuration did not meet 20 s at {prompt_tokens} tokens either")
    cell = llm_load.cached(users=chat_objectives.latency_users, prompt_tokens=prompt_tokens)
    cell.assert_slo(e2e_p95_s=chat_objectives.latency_limit_s)


def test_tokens_per_second_per_user_at_20_users(llm_load, chat_objectives):
    cell = llm_load(users=chat_objectives.speed_users, prompt_tokens=chat_objectives.speed_prompt)
    cell.assert_slo(tokens_per_s_per_user_p50=chat_objectives.speed_floor)


def test_capacity(llm_load, chat_objectives, record_property):
    capacity = llm_load.max_users(prompt_tokens=chat_objectives.capacity_prompt,
                                  e2e_p95_s=chat_objectives.capacity_limit_s,
                                  limit=max(128, chat_objectives.capacity_min_users))
    record_property("llm_max_users", capacity.max_users)
    print(capacity.summary())
    capacity.assert_at_least(chat_objectives.capacity_min_users)
