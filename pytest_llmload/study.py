"""The reference study's conclusions for a chat service, as thresholds for the model under test
(what `suites/test_chat_objectives.py` checks; public, for suites of your own).

For a preset that has a table in the reference study, `from_study` takes the thresholds from that
table (the study measured them on the preset's own hardware):
  - latency: E2E p95 <= 20 s at 32 users, for the prompt sizes up to 822 tokens where the study's
    configuration met 20 s (the study's conclusion for a chat service);
  - speed: tokens/s per user at 20 users at least 80 % of what the study's table implies there
    (100 tokens / E2E interpolated between 16 and 32 users at 480 prompt tokens; "about 20 tok/s" for
    Mistral-7B);
  - capacity: at 480 prompt tokens, at least as many users as the study's largest row under 20 s.

A machine without a table (the CPU default `tiny`) gets `scaled_to_machine` thresholds: after a warm-up
request, `single_request_time` measures one user with a 31-token prompt (the study's first cell) twice,
and the faster mean E2E divided by the study's Mistral-7B value for that cell (1.8 s) scales them: time
limits are multiplied by that factor and throughput floors divided by it, so "20 s at 32 users" becomes
"as many single-request times as the study allowed"; a `CPU_HEADROOM` of 1.5 absorbs the noise of a
shared 2-core machine, and the capacity floor is 8 users.

    objectives = from_study(study_tables()["I"])                  # Mistral-7B on 2x V100
    objectives = scaled_to_machine(single_request_time(llm_session))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import LLMLoadError

if TYPE_CHECKING:
    from .report.reference import ReferenceMatrix
    from .session import LoadSession

STUDY_REFERENCE_TABLE = "I"  # Mistral-7B on 2x V100: the scale reference for machines without a table
LATENCY_USERS, LATENCY_LIMIT_S = 32, 20.0
STUDY_CHAT_PROMPTS = (31, 63, 119, 296, 480, 822)  # "prompts up to 822 tokens"
SPEED_USERS, SPEED_PROMPT = 20, 480
CAPACITY_PROMPT = 480
SPEED_TOLERANCE = 0.8
CPU_HEADROOM = 1.5  # margin for the noise of a shared 2-core machine (+-30-50 % measured)
CPU_MIN_USERS = 8
CALIBRATION_PROMPT = 31  # the study's first cell: one user, 31 prompt tokens


@dataclass(frozen=True)
class ChatObjectives:
    """Thresholds for one model and the cells they apply to; `source` says where they came from."""

    source: str
    latency_limit_s: float  # E2E p95 at `latency_users`, for each of `latency_prompts`
    latency_prompts: tuple[int, ...]
    speed_floor: float  # tokens/s per user, p50, at `speed_users` and `speed_prompt`
    capacity_limit_s: float  # E2E p95 a user count must meet to count towards the capacity
    capacity_min_users: int  # at `capacity_prompt`
    latency_users: int = LATENCY_USERS
    speed_users: int = SPEED_USERS
    speed_prompt: int = SPEED_PROMPT
    capacity_prompt: int = CAPACITY_PROMPT


def study_tables() -> dict[str, ReferenceMatrix]:
    """The reference study's tables keyed by their number (I..VII), as shipped with the package."""
    from .report.reference import load_study_tables

    return load_study_tables()


def _e2e_at(table: ReferenceMatrix, users: int, prompt: int) -> float | None:
    """E2E from the table, linearly interpolated between the two neighbouring user counts."""
    rows = [u for u in table.users if table.value(u, prompt) is not None]
    below = max((u for u in rows if u <= users), default=None)
    above = min((u for u in rows if u >= users), default=None)
    if below is None or above is None:
        return None
    lo, hi = table.value(below, prompt), table.value(above, prompt)
    assert lo is not None and hi is not None
    return lo if above == below else lo + (hi - lo) * (users - below) / (above - below)


def _nearest(sizes: tuple[int, ...], prompt: int) -> int:
    """The table's prompt size closest to `prompt` (Table VII was measured at other sizes: 21..1848)."""
    return min(sizes, key=lambda s: abs(s - prompt))


def from_study(table: ReferenceMatrix) -> ChatObjectives:
    """Objectives for a preset measured in the study, from its own table."""
    prompts = tuple(p for p in STUDY_CHAT_PROMPTS
                    if (table.value(LATENCY_USERS, _nearest(table.prompt_tokens, p)) or 1e9) <= LATENCY_LIMIT_S)
    e2e = _e2e_at(table, SPEED_USERS, _nearest(table.prompt_tokens, SPEED_PROMPT))
    capacity_prompt = _nearest(table.prompt_tokens, CAPACITY_PROMPT)
    under = [u for u in table.users if (table.value(u, capacity_prompt) or 1e9) <= LATENCY_LIMIT_S]
    return ChatObjectives(
        source=f"study {table.description}",
        latency_limit_s=LATENCY_LIMIT_S, latency_prompts=prompts,
        speed_floor=SPEED_TOLERANCE * 100 / e2e if e2e else 0.0,
        capacity_limit_s=LATENCY_LIMIT_S, capacity_min_users=max(under, default=1),
    )


def scaled_to_machine(single_user_e2e_s: float) -> ChatObjectives:
    """Objectives for a machine without a study table, scaled by its single-request time."""
    ref = study_tables()[STUDY_REFERENCE_TABLE]
    base = from_study(ref)
    study_single = ref.value(1, CALIBRATION_PROMPT) or 1.8
    scale = single_user_e2e_s / study_single * CPU_HEADROOM
    return ChatObjectives(
        source=(f"scaled to this machine: one request took {single_user_e2e_s:.3f} s vs the study's "
                f"{study_single} s, x{CPU_HEADROOM} CPU headroom -> factor {scale:.4f}"),
        latency_limit_s=base.latency_limit_s * scale, latency_prompts=base.latency_prompts,
        speed_floor=base.speed_floor / scale, capacity_limit_s=base.capacity_limit_s * scale,
        capacity_min_users=CPU_MIN_USERS,
    )


def single_request_time(session: LoadSession, repeats: int = 2) -> float:
    """Seconds one request takes on this server when alone: after an unrecorded warm-up request, the
    faster mean E2E of `repeats` one-user cells with a 31-token prompt (they are recorded in the run).
    LLMLoadError naming the cause when such a cell fails."""
    session.warm_up()
    cells = [session.run_cell(1, CALIBRATION_PROMPT) for _ in range(max(1, repeats))]
    times = [c.e2e.mean for c in cells if c.ok and c.e2e is not None]
    if len(times) < len(cells):
        failed = next(c for c in cells if not c.ok or c.e2e is None)
        raise LLMLoadError(f"calibration cell ({failed.label}) failed: {failed.error}")
    return min(times)
