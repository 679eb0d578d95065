"""The suites' thresholds: taken from the study's table for each preset, scaled for the CPU default."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from pytest_llmload.server.presets import PRESETS

PATH = Path(__file__).resolve().parents[2] / "suites" / "objectives.py"
_spec = importlib.util.spec_from_file_location("suite_objectives", PATH)
assert _spec is not None and _spec.loader is not None
objectives = importlib.util.module_from_spec(_spec)
sys.modules["suite_objectives"] = objectives
_spec.loader.exec_module(objectives)


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
