"""The shipped study tables, choosing a reference by table number, model name or file, and ratios."""

from __future__ import annotations

import math

import json
from pathlib import Path

import pytest

from pytest_llmload.report.json_report import save_baseline
from pytest_llmload.errors import ConfigError, ReportFileError
from pytest_llmload.metrics import cell_stats
from pytest_llmload.report.reference import load_study_tables, ratio_matrix, reference_from, render_ratio
from pytest_llmload.results import CellResult, RequestRecord, RunResult

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "study-tables.json"


def run_with_e2e(values: dict[tuple[int, int], float]) -> RunResult:
    """Cells whose every request takes exactly the given seconds."""
    cells = []
    for (users, prompt), e2e in values.items():
        recs = [RequestRecord(index=i, start=0.0, end=e2e, first_token=0.1, output_tokens=100) for i in range(users)]
        cells.append(CellResult(users=users, prompt_tokens=prompt, max_tokens=100, ok=True,
                                stats=cell_stats(recs), records=tuple(recs)))
    return RunResult(environment={"model": "Mistral-7B"}, cells=cells)


def test_shipped_tables_match_the_study() -> None:
    tables = load_study_tables()
    assert list(tables) == ["I", "II", "III", "IV", "V", "VI", "VII"]
    one = tables["I"]
    assert one.model == "Mistral-7B" and one.users[-1] == 128 and one.prompt_tokens == (31, 63, 119, 296, 480, 822, 2193)
    assert one.value(1, 31) == 1.8 and one.value(128, 2193) == 72.1 and one.value(3, 31) is None
    assert tables["VII"].prompt_tokens[0] == 21  # Llama-3's tokenizer counts the same prompts differently
    assert any(v is None for t in tables.values() for row in t.seconds for v in row)  # the study's "-"


@pytest.mark.skipif(not SHARED.exists(), reason="the shared reference copy is not checked out here")
def test_shipped_copy_equals_the_reference() -> None:
    shipped = load_study_tables()
    assert load_study_tables(SHARED) == shipped


@pytest.mark.parametrize("query, table", [("I", "Table I"), ("vii", "Table VII"), ("Table IV", "Table IV"),
                                          ("Mistral-7B", "Table I"), ("codestral awq", "Table II"),
                                          ("codestral gptq", "Table III"), ("llama-3 70b", "Table VII"),
                                          ("mixtral 8x22b", "Table VI")])
def test_reference_by_name(query: str, table: str) -> None:
    assert reference_from(query).name == table


@pytest.mark.parametrize("query, message", [("codestral", "matches several study tables"),
                                            ("gpt-4", "neither a report file nor a study table")])
def test_reference_by_name_errors_list_the_tables(query: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        reference_from(query)
    assert "Table II: Codestral-22B, AWQ 4-bit, 1x A100 40GB" in str(info.value)


def test_ratio_against_study_table() -> None:
    run = run_with_e2e({(1, 31): 0.9, (1, 63): 3.6, (2, 31): 2.1, (1, 5): 1.0})
    users, prompts, ratios = ratio_matrix(run, reference_from("I"))
    assert users == [1, 2] and prompts == [5, 31, 63]
    assert ratios[0] == [None, pytest.approx(0.5), pytest.approx(2.0)]  # no reference for 5 tokens
    assert math.isnan(ratios[1][2] or 0.0)  # not measured
    text = render_ratio(run, reference_from("I"))
    assert text.splitlines()[0].startswith("E2E mean of Mistral-7B / Table I: Mistral-7B, 2x V100 16GB")
    assert "0.50" in text and "2.00" in text and "-" in text.splitlines()[-1]


def test_reference_from_a_baseline_file(tmp_path: Path) -> None:
    base = run_with_e2e({(1, 31): 2.0, (2, 31): 4.0})
    path = save_baseline(base, tmp_path / "base.json")
    ref = reference_from(path)
    assert ref.value(2, 31) == pytest.approx(4.0)
    _, _, ratios = ratio_matrix(run_with_e2e({(1, 31): 1.0, (2, 31): 4.0}), ref)
    assert ratios == [[pytest.approx(0.5)], [pytest.approx(1.0)]]


def test_damaged_reference_file(tmp_path: Path) -> None:
    bad = tmp_path / "tables.json"
    bad.write_text(json.dumps({"tables": [{"table": "I"}]}))
    with pytest.raises(ReportFileError, match="not a study-tables file"):
        load_study_tables(bad)
    broken_report = tmp_path / "llmload.json"
    broken_report.write_text("{")
    with pytest.raises(ReportFileError):
        reference_from(broken_report)
