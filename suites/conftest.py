"""Fixtures of the suites: which chat objectives apply to the model under test.

A model with a table in the reference study is held to that table; the CPU default `tiny` to the study
scaled to this machine (`pytest_llmload.study`); any other model has no built-in thresholds: give them
with --llm-slo-file or the llm_slo ini option, which the plugin checks as test items of their own.
"""

from __future__ import annotations

import pytest

from pytest_llmload.study import ChatObjectives, from_study, scaled_to_machine, single_request_time, study_tables


@pytest.fixture(scope="session")
def chat_objectives(llm_session, llm_server) -> ChatObjectives:
    """The study's chat objectives for this model: its preset's table, or scaled to the machine for `tiny`."""
    preset = llm_session.preset
    if preset is not None and preset.study_table:
        return from_study(study_tables()[preset.study_table])
    if preset is not None and preset.name == "tiny":
        return scaled_to_machine(single_request_time(llm_session))
    pytest.skip(f"no built-in objectives for model {llm_session.settings.model!r}: "
                "give them with --llm-slo-file or the llm_slo ini option")
