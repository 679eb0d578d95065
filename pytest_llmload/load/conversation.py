"""Conversations and replays as request plans, the prefix-cache state of a cell, and statistics per turn.

A conversation cell (`CellSpec.turns` > 1, chat API): each of N users holds one conversation of T turns.
Turn k sends the conversation so far (every earlier user message and the reply the server gave to it)
plus a new user message of `prompt_tokens` tokens (sized as a one-message chat prompt, distinct per user
and turn), so the prompt grows by about a message and a reply per turn and an earlier turn's blocks can
be found in vLLM's prefix cache. Request index `turn * users + user`; records carry both.

The prefix-cache state of a cell (`CellSpec.cache`):

- `cold`: `POST /reset_prefix_cache` before the cell. vLLM serves it only with `VLLM_SERVER_DEV_MODE=1`,
  which the plugin sets for servers it launches on a loopback address (never for one reachable from
  elsewhere: the dev routes can reset or sleep the engine); an attached server answers 404, the cell is
  then `uncontrolled` and invalid (it was asked cold and cannot be shown to be);
- `warm`: every prompt that starts a conversation (every prompt of a plain cell or a replay) is sent
  once with `max_tokens` 1, unrecorded, before the cell;
- `uncontrolled`: nothing is done (said in the report); "" (the default) is the same, unsaid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..results import RequestRecord
from ..vocabulary import distribution
from .shard import RequestPlan
from .trace import Workload
from .workload import Prompt, PromptFactory

CACHE_STATES = ("cold", "warm", "uncontrolled")


def conversation_plan(users: int, turns: int) -> RequestPlan:
    """User u's turns are requests u, users + u, 2 users + u, ...: one sequence per user, with history."""
    sequences = [[t * users + u for t in range(turns)] for u in range(users)]
    meta = [(i % users, i // users) for i in range(users * turns)]
    return RequestPlan(meta=meta, sequences=sequences, history=True)


async def trace_prompts(workload: Workload, factory: PromptFactory) -> list[Prompt]:
    """A prompt per line: the line's text, or a distinct prompt of exactly its `prompt_tokens`."""
    need: dict[int, int] = {}
    for r in workload.requests:
        if r.prompt is None and r.prompt_tokens is not None:
            need[r.prompt_tokens] = need.get(r.prompt_tokens, 0) + 1
    made = {size: list(await factory.prompts(size, n)) for size, n in need.items()}
    out = []
    for r in workload.requests:
        if r.prompt is not None:
            out.append(Prompt(r.prompt, r.prompt_tokens))
        else:
            assert r.prompt_tokens is not None  # parse_line requires one of the two
            out.append(made[r.prompt_tokens].pop(0))
    return out


def trace_plan(workload: Workload, closed: bool) -> RequestPlan:
    """Per line: its output tokens and (conversation, turn); closed loop: a user takes a whole conversation."""
    numbers = workload.conversation_numbers()
    return RequestPlan(max_tokens=[r.output_tokens for r in workload.requests],
                       meta=[(n, r.turn) for n, r in zip(numbers, workload.requests)],
                       sequences=workload.conversations() if closed else None)


def warm_prompts(prompts: Sequence[Prompt], plan: RequestPlan | None) -> list[Prompt]:
    """What a `warm` cell sends first: the prompts that start a conversation (all of them without one)."""
    if plan is None or not plan.history or plan.meta is None:
        return list(prompts)
    return [p for p, (_, turn) in zip(prompts, plan.meta) if not turn]


def turn_sections(records: Sequence[RequestRecord]) -> list[dict[str, Any]]:
    """Per turn of a conversation cell: requests, TTFT and E2E (mean, p50, p95), prompt tokens, and the
    share of prompt tokens the server found in its prefix cache (usage cached_tokens, when it reports them)."""
    turns = sorted({r.turn for r in records if r.turn is not None})
    out = []
    for turn in turns:
        mine = [r for r in records if r.turn == turn]
        ok = [r for r in mine if r.ok]
        ttft = distribution(r.ttft for r in ok if r.ttft is not None)
        e2e = distribution(r.e2e for r in ok)
        prompt = sum(r.prompt_tokens or 0 for r in ok)
        cached = [r.cached_tokens for r in ok if r.cached_tokens is not None]
        out.append({
            "turn": turn, "requests": len(mine), "ok": len(ok),
            "ttft_s": None if ttft is None else {"mean": ttft.mean, "p50": ttft.p50, "p95": ttft.p95},
            "e2e_s": None if e2e is None else {"mean": e2e.mean, "p50": e2e.p50, "p95": e2e.p95},
            "prompt_tokens_mean": prompt / len(ok) if ok else None,
            "cached_tokens": sum(cached) if cached else None,
            "cached_share": sum(cached) / prompt if cached and len(cached) == len(ok) and prompt else None,
        })
    return out


def usage_hit_rate(records: Sequence[RequestRecord]) -> float | None:
    """Cached prompt tokens / prompt tokens over the successful requests, when every one reported them."""
    ok = [r for r in records if r.ok]
    if not ok or any(r.cached_tokens is None or r.prompt_tokens is None for r in ok):
        return None
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    return sum(r.cached_tokens or 0 for r in ok) / prompt if prompt else None
