"""The README stays true: every option is documented, and CI runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from pytest_llmload import __all__ as public
from pytest_llmload.options import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_option_is_in_the_readme() -> None:
    missing = [o.flag for o in OPTIONS if f"`{o.flag}" not in README] + [o.ini for o in OPTIONS if o.ini not in README]
    assert not missing, f"README lacks: {missing}"


def test_ci_runs_the_readme_test_command() -> None:
    commands = re.findall(r"```\n(pytest [^\n]*)\n```", README)
    assert "pytest tests/" in commands
    assert "\npytest tests/\n" in (ROOT / ".ci" / "run").read_text()


def test_public_api_is_importable() -> None:
    import pytest_llmload

    for name in public:
        assert getattr(pytest_llmload, name) is not None, name
