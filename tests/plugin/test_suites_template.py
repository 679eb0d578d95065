"""suites/ is what users copy: it must read like user code (public fixtures and API only, no sys.path
edits) and hold up when a cell has no statistics."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SUITES = Path(__file__).resolve().parents[2] / "suites"
PUBLIC_MODULES = {"pytest", "pytest_llmload", "pytest_llmload.study", "__future__"}
INTERNALS = {"runner", "model_choice", "spec", "_stack", "_runner", "path"}


def _suite_files() -> list[Path]:
    return sorted(SUITES.glob("*.py"))


@pytest.mark.parametrize("path", _suite_files(), ids=lambda p: p.name)
def test_suite_files_use_only_public_api(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert imported <= PUBLIC_MODULES, f"{path.name} imports {imported - PUBLIC_MODULES}"
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not attributes & INTERNALS, f"{path.name} reaches into {attributes & INTERNALS}"
    assert not [a for a in attributes if a.startswith("_")], path.name


CELLS_CONFTEST = """
import pytest
from pytest_llmload.metrics import cell_stats
from pytest_llmload.results import CellResult, RequestRecord

@pytest.fixture
def llm_cell(request):
    users, prompt_tokens = request.param
    if prompt_tokens == 31:  # the server died before this cell: no statistics at all
        return CellResult(users=users, prompt_tokens=31, max_tokens=100, ok=False,
                          error="server died (exit code -9)")
    # every request refused as too long for the context: the study's "-"
    recs = tuple(RequestRecord(index=i, start=0.0, end=0.01, error="http_400") for i in range(users))
    return CellResult(users=users, prompt_tokens=prompt_tokens, max_tokens=100, ok=False,
                      error="HTTP 400: prompt too long", stats=cell_stats(recs), records=recs)
"""


def test_study_matrix_reports_a_cell_without_statistics(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CELLS_CONFTEST)
    pytester.makepyfile(test_study_matrix=(SUITES / "test_study_matrix.py").read_text())
    result = pytester.runpytest_subprocess("--llm-users=2", "--llm-prompt-tokens=31,2193", "-p", "no:cacheprovider",
                                           "-rs")
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*cell users=2 prompt_tokens=31 max_tokens=100 failed: server died (exit code -9)*",
                                 "*could not run (the study's '-'): HTTP 400: prompt too long*"])
    assert "AttributeError" not in result.stdout.str()
