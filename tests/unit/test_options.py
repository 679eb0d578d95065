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
