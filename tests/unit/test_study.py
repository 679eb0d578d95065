"""The suites' thresholds (pytest_llmload.study): the study's table for each preset, scaled for the CPU default."""

from __future__ import annotations

import pytest

from pytest_llmload import study as objectives
from pytest_llmload.errors import LLMLoadError
from pytest_llmload.metrics import cell_stats
from pytest_llmload.results import CellResult, RequestRecord
from pytest_llmload.server.presets import PRESETS


def test_mistral_objectives_are_the_studys_conclusions() -> None:
    o = objectives.from_study(objectives.study_tables()["I"])
    assert o.latency_limit_s == 20 and o.latency_prompts == (31, 63, 119, 296, 480, 822)
    assert o.capacity_min_users == 64  # 64 users at 480 tokens took 11.9 s, 128 took 24.4 s
    # 20 users at 480 tokens: between 4.2 s (16) and 6.9 s (32) -> 4.875 s -> 20.5 tok/s; 80 % of it
    assert o.speed_floor == pytest.approx(0.8 * 100 / 4.875)


def test_a_configuration_that_missed_20_s_is_not_held_to_it() -> None:
    o = objectives.from_study(objectives.study_tables()["III"])  # 24.6 s at 32 users, 822 tokens
    assert 822 not in o.latency_prompts and o.capacity_min_users == 32


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.study_table])
def test_every_study_preset_has_objectives(name: str) -> None:
    o = objectives.from_study(objectives.study_tables()[PRESETS[name].study_table])
    assert o.latency_prompts and o.speed_floor > 0 and o.capacity_min_users >= 1


def test_scaled_to_the_machine() -> None:
    o = objectives.scaled_to_machine(0.18)  # 10x faster than the study's single request (1.8 s)
    factor = 0.1 * objectives.CPU_HEADROOM
    assert o.latency_limit_s == pytest.approx(20 * factor)
    assert o.speed_floor == pytest.approx(0.8 * 100 / 4.875 / factor)
    assert o.capacity_min_users == objectives.CPU_MIN_USERS


class _Session:
    """What `single_request_time` uses of a LoadSession: warm_up() and run_cell(users, prompt_tokens)."""

    def __init__(self, seconds: list[float | None]) -> None:
        self.seconds = seconds
        self.calls: list[str] = []

    def warm_up(self) -> None:
        self.calls.append("warm_up")

    def run_cell(self, users: int, prompt_tokens: int) -> CellResult:
        self.calls.append(f"cell {users}x{prompt_tokens}")
        e2e = self.seconds.pop(0)
        if e2e is None:
            return CellResult(users=users, prompt_tokens=prompt_tokens, max_tokens=100, ok=False, error="boom")
        recs = (RequestRecord(index=0, start=0.0, end=e2e, output_tokens=100),)
        return CellResult(users=users, prompt_tokens=prompt_tokens, max_tokens=100, ok=True,
                          stats=cell_stats(recs), records=recs)


def test_single_request_time_warms_up_then_takes_the_faster_of_two() -> None:
    session = _Session([0.7, 0.5])
    assert objectives.single_request_time(session) == pytest.approx(0.5)  # type: ignore[arg-type]
    assert session.calls == ["warm_up", "cell 1x31", "cell 1x31"]


def test_single_request_time_names_a_failed_cell() -> None:
    with pytest.raises(LLMLoadError, match=r"calibration cell \(users=1 prompt_tokens=31 max_tokens=100\) failed: boom"):
        objectives.single_request_time(_Session([0.5, None]))  # type: ignore[arg-type]
