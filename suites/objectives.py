"""The chat-service objectives of the suites, per model.

For a preset that has a table in the reference study, the thresholds come from that table (the study
measured them on the preset's own hardware):
  - latency: E2E p95 <= 20 s at 32 users, for the prompt sizes up to 822 tokens where the study's
    configuration met 20 s (the study's conclusion for a chat service);
  - speed: tokens/s per user at 20 users at least 80 % of what the study's table implies there
    (100 tokens / E2E interpolated between 16 and 32 users at 480 prompt tokens; "about 20 tok/s" for
    Mistral-7B);
  - capacity: at 480 prompt tokens, at least as many users as the study's largest row under 20 s.

For the CPU default (`tiny`) no table exists, so the objectives are *scaled to the machine*: the suite
measures one user with a 31-token prompt (the study's first cell) and divides it by the study's Mistral-7B
value for that cell (1.8 s). Time limits are multiplied by that factor and throughput floors divided
by it, so "20 s at 32 users" becomes "as many single-request times as the study allowed". A CPU batches
far worse than a GPU (two cores share the server and the client here), so the tiny objectives also get
a documented `CPU_HEADROOM` factor and a capacity floor of 8 users.

Other models (hub ids, local folders) have no built-in thresholds: give them with `--llm-slo-file` or the
`llm_slo` ini option, and the chat-objective tests skip with a message saying so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

STUDY_REFERENCE_TABLE = "I"  # Mistral-7B on 2x V100: the scale reference for machines without a table
LATENCY_USERS, LATENCY_LIMIT_S, LATENCY_MAX_PROMPT = 32, 20.0, 822
SPEED_USERS, SPEED_PROMPT = 20, 480
CAPACITY_PROMPT = 480
SPEED_TOLERANCE = 0.8
CPU_HEADROOM = 3.0
CPU_MIN_USERS = 8


@dataclass(frozen=True)
class ChatObjectives:
    """Thresholds for one model; `source` says where they came from, for failure messages."""

    source: str
    latency_limit_s: float
    latency_prompts: tuple[int, ...]
    speed_floor: float  # tokens/s per user, p50, at SPEED_USERS
    capacity_limit_s: float
    capacity_min_users: int


def study_tables() -> dict[str, dict[str, Any]]:
    """The reference study's tables keyed by their number (I..VII)."""
    text = resources.files("pytest_llmload").joinpath("data/study-tables.json").read_text()
    return {t["table"]: t for t in json.loads(text)["tables"]}


def _value(table: dict[str, Any], users: int, prompt: int) -> float | None:
    if users not in table["users"] or prompt not in table["prompt_tokens"]:
        return None
    return table["seconds"][table["users"].index(users)][table["prompt_tokens"].index(prompt)]


def _e2e_at(table: dict[str, Any], users: int, prompt: int) -> float | None:
    """E2E from the table, linearly interpolated between the two neighbouring user counts."""
    rows = [u for u in table["users"] if _value(table, u, prompt) is not None]
    below = max((u for u in rows if u <= users), default=None)
    above = min((u for u in rows if u >= users), default=None)
    if below is None or above is None:
        return None
    lo, hi = _value(table, below, prompt), _value(table, above, prompt)
    assert lo is not None and hi is not None
    return lo if above == below else lo + (hi - lo) * (users - below) / (above - below)


def from_study(table: dict[str, Any]) -> ChatObjectives:
    """Objectives for a preset measured in the study, from its own table."""
    prompts = tuple(p for p in table["prompt_tokens"] if p <= LATENCY_MAX_PROMPT
                    and (_value(table, LATENCY_USERS, p) or 1e9) <= LATENCY_LIMIT_S)
    e2e = _e2e_at(table, SPEED_USERS, SPEED_PROMPT) or _e2e_at(table, SPEED_USERS, table["prompt_tokens"][0])
    under = [u for u in table["users"] if (_value(table, u, CAPACITY_PROMPT) or 1e9) <= LATENCY_LIMIT_S]
    return ChatObjectives(
        source=f"study table {table['table']} ({table['model']}, {table['gpus']})",
        latency_limit_s=LATENCY_LIMIT_S, latency_prompts=prompts,
        speed_floor=SPEED_TOLERANCE * 100 / e2e if e2e else 0.0,
        capacity_limit_s=LATENCY_LIMIT_S, capacity_min_users=max(under, default=1),
    )


def scaled_to_machine(single_user_e2e_s: float) -> ChatObjectives:
    """Objectives for a machine without a study table, scaled by its single-request time."""
    ref = study_tables()[STUDY_REFERENCE_TABLE]
    base = from_study(ref)
    scale = single_user_e2e_s / ref["seconds"][0][0] * CPU_HEADROOM
    return ChatObjectives(
        source=(f"scaled to this machine: one request took {single_user_e2e_s:.3f} s vs the study's "
                f"{ref['seconds'][0][0]} s, x{CPU_HEADROOM} CPU headroom -> factor {scale:.4f}"),
        latency_limit_s=base.latency_limit_s * scale, latency_prompts=base.latency_prompts,
        speed_floor=base.speed_floor / scale, capacity_limit_s=base.capacity_limit_s * scale,
        capacity_min_users=CPU_MIN_USERS,
    )
