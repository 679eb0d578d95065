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


def _cells(row: str) -> list[str]:
    """A Markdown table row's cells: split on the pipes that are not escaped (GFM, also in code spans)."""
    return re.split(r"(?<!\\)\|", row.strip())[1:-1]


def _tables(text: str) -> list[list[str]]:
    """Every Markdown table (consecutive lines starting with '|'), outside fenced code blocks."""
    tables: list[list[str]] = []
    fenced = False
    current: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("|"):
            current.append(line)
            continue
        if current:
            tables.append(current)
            current = []
    return tables


def test_every_readme_table_renders() -> None:
    tables = _tables(README)
    assert len(tables) >= 6
    for table in tables:
        header, delimiter, *rows = table
        width = len(_cells(header))
        assert re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", delimiter.strip()) and len(_cells(delimiter)) == width, header
        for row in rows:
            assert row.rstrip().endswith("|") and len(_cells(row)) == width, f"{header}\n{row}"


def test_the_table_check_catches_a_fused_row_and_a_bare_pipe() -> None:
    fused = "| a | b |\n|---|---|\n| 1 | 2 || 3 | 4 |\n"
    bare = "| a | b |\n|---|---|\n| `X|Y` | 2 |\n"
    for text in (fused, bare):
        (header, _, row) = _tables(text)[0]
        assert len(_cells(row)) != len(_cells(header))


def test_test_files_have_unique_basenames() -> None:
    """The layers share one sys.path entry per folder (rootdir-relative imports): two test files of one
    name in two layers make the second fail to collect in a full run."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
