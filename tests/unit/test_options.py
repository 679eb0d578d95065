"""Option parsing: bad values fail at parse time naming the option; ini and env follow the same rules."""

from __future__ import annotations

import argparse

import pytest

from pytest_llmload.errors import ConfigError
from pytest_llmload.options import (
    OPTIONS_BY_DEST,
    STUDY_PROMPT_TOKENS,
    STUDY_USERS,
    Settings,
    parse_base_url,
    parse_int_list,
    parse_positive_int,
)


@pytest.mark.parametrize("value", ["0", "-3", "abc", "1.5", ""])
def test_positive_int_rejects(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_positive_int(value)


def test_int_list_keeps_order_and_drops_duplicates() -> None:
    assert parse_int_list("8,1, 2,8") == (8, 1, 2)


@pytest.mark.parametrize("value", ["0", "1,-3", "abc", ",", "1,,x"])
def test_int_list_rejects(value: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_int_list(value)


def test_base_url_strips_v1_and_rejects_non_http() -> None:
    assert parse_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000"
    with pytest.raises(argparse.ArgumentTypeError):
        parse_base_url("127.0.0.1:8000")


def _settings(cli: dict[str, object] | None = None, ini: dict[str, object] | None = None,
              env: dict[str, str] | None = None) -> Settings:
    cli, ini = cli or {}, ini or {}
    return Settings.from_values(lambda d: cli.get(d), lambda n: ini.get(n), env or {})


def test_defaults_are_the_study_matrix() -> None:
    s = _settings()
    assert (s.users, s.prompt_tokens, s.max_tokens, s.model) == (STUDY_USERS, STUDY_PROMPT_TOKENS, 100, "tiny")


def test_cli_beats_env_beats_ini() -> None:
    s = _settings(cli={"llm_users": (2,)}, ini={"llm_users": "4", "llm_model": "mistral-7b"},
                  env={"LLMLOAD_MODEL": "tiny"})
    assert s.users == (2,) and s.model == "tiny"


def test_bad_ini_value_names_the_ini_key() -> None:
    with pytest.raises(ConfigError, match=r"ini option llm_max_tokens \(for --llm-max-tokens\).*'0' must be 1"):
        _settings(ini={"llm_max_tokens": "0"})


def test_api_key_from_environment_is_not_in_repr() -> None:
    s = _settings(env={"OPENAI_API_KEY": "sk-secret-123"})
    assert s.api_key == "sk-secret-123" and "sk-secret" not in repr(s)


def test_every_option_has_a_settings_field_and_help() -> None:
    fields = set(Settings.__dataclass_fields__)
    for dest, opt in OPTIONS_BY_DEST.items():
        assert dest[len("llm_"):] in fields and opt.help


def test_repeats_default_to_three_when_comparing() -> None:
    assert _settings().effective_repeats == 1
    assert _settings(cli={"llm_save_baseline": "b.json"}).effective_repeats == 3
    assert _settings(cli={"llm_baseline": "b.json"}).effective_repeats == 3
    assert _settings(cli={"llm_candidate_server_arg": ("--max-num-seqs=4",)}).effective_repeats == 3
    assert _settings(cli={"llm_baseline": "b.json", "llm_repeats": 5}).effective_repeats == 5
    assert _settings(ini={"llm_repeats": "2"}).effective_repeats == 2
    with pytest.raises(ConfigError, match=r"llm_repeats.*'0' must be 1"):
        _settings(ini={"llm_repeats": "0"})
    assert "Default: 3 when a baseline is saved" in OPTIONS_BY_DEST["llm_repeats"].help_text


def test_candidate_settings_are_the_session_with_the_candidate_in_place() -> None:
    s = _settings(cli={"llm_server_arg": ("--max-num-seqs=256",), "llm_candidate_server_arg": ("--max-num-seqs=4",),
                       "llm_baseline": "b.json", "llm_compare_fail": ("e2e_p50:10%",), "llm_users": (8, 32)})
    c = s.candidate_settings()
    assert c.server_arg == ("--max-num-seqs=4",) and c.model == "tiny" and c.base_url is None
    assert c.users == (8, 32) and c.effective_repeats == 3 and not c.has_candidate
    assert (c.baseline, c.compare_fail, c.save_baseline) == (None, (), None)
    assert c.report_dir == "llmload-report/candidate"
    same_args = _settings(cli={"llm_server_arg": ("--x=1",), "llm_candidate_model": "mistral-7b"}).candidate_settings()
    assert same_args.model == "mistral-7b" and same_args.server_arg == ("--x=1",)
    attached = _settings(cli={"llm_candidate_base_url": "http://127.0.0.1:9000", "llm_candidate_model": "tiny"})
    assert attached.candidate_settings().base_url == "http://127.0.0.1:9000"
    assert attached.candidate_settings().served_model_name == "tiny"


def test_candidate_and_gate_options_are_checked_together() -> None:
    from pytest_llmload.session import check_settings

    with pytest.raises(ConfigError, match="--llm-compare-fail needs something to compare against"):
        check_settings(_settings(cli={"llm_compare_fail": ("e2e_p50:10%",)}))
    check_settings(_settings(cli={"llm_compare_fail": ("e2e_p50:10%",), "llm_candidate_server_arg": ("--x",)}))
    with pytest.raises(ConfigError, match="--llm-candidate-server-arg only applies"):
        check_settings(_settings(cli={"llm_candidate_base_url": "http://127.0.0.1:9000",
                                      "llm_candidate_server_arg": ("--x",)}))
