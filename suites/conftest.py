"""Fixtures of the suites: which objectives apply to the model under test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # suites/ is not a package; objectives.py sits beside us

from objectives import ChatObjectives, from_study, scaled_to_machine, study_tables  # noqa: E402


@pytest.fixture(scope="session")
def chat_objectives(llm_session, llm_server) -> ChatObjectives:
    """The study's chat objectives for this model: its preset's table, or scaled to the machine for `tiny`."""
    preset = getattr(llm_session.model_choice, "preset", None)
    if preset is not None and preset.study_table:
        return from_study(study_tables()[preset.study_table])
    if preset is not None and preset.name == "tiny":
        llm_session.runner.run_cell_kw(1, 31, max_tokens=8)  # warm-up, not recorded
        cells = [llm_session.run_cell(1, 31) for _ in range(2)]
        failed = [c for c in cells if not c.ok or c.e2e is None]
        if failed:
            pytest.fail(f"calibration cell (1 user, 31 tokens) failed: {failed[0].error}")
        return scaled_to_machine(min(c.e2e.mean for c in cells))
    pytest.skip(f"no built-in objectives for model {llm_session.settings.model!r}: "
                "give them with --llm-slo-file or the llm_slo ini option (see test_configured_slos)")
