"""Every option's help goes through argparse's %-formatting (as `pytest --help` does) and comes out
as written: a bare % in a help text would crash `pytest --help` in every project of the environment."""

from __future__ import annotations

import argparse

import pytest

from pytest_llmload.options import OPTIONS, Option


def _formatted(opt: Option) -> str:
    parser = argparse.ArgumentParser(prog="pytest", add_help=False, formatter_class=argparse.RawTextHelpFormatter)
    if opt.kind == "flag":
        parser.add_argument(opt.flag, action="store_true", default=None, help=opt.help_text)
    else:
        parser.add_argument(opt.flag, metavar=opt.metavar, default=None, help=opt.help_text)
    return " ".join(parser.format_help().split())


@pytest.mark.parametrize("opt", OPTIONS, ids=[o.flag for o in OPTIONS])
def test_help_is_formatted_as_written(opt: Option) -> None:
    shown = _formatted(opt)
    assert " ".join(opt.help.split()) in shown
    assert "Default: " in shown


def test_a_percent_sign_survives_formatting() -> None:
    (gate,) = [o for o in OPTIONS if o.flag == "--llm-compare-fail"]
    assert "e2e_p95:10% (repeatable" in _formatted(gate)
