"""report.html: self-contained, escaped, with matrices, figures and optional sections; without matplotlib,
a note with the install command in place of the figures (rendering in a real headless Chromium:
tests/integration/test_report_html_chromium.py)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from pytest_llmload.report.html import render_html
from pytest_llmload.results import RunResult

from factories import make_run, rich_run

def test_html_is_self_contained_and_escaped() -> None:
    page = render_html(rich_run())
    assert "<script" not in page.lower()  # neither ours nor the hostile model name's
    assert "&lt;script&gt;" in page
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(u.startswith(("data:image/png;base64,", "#")) for u in links)
    assert "http://" not in page and "https://" not in page
    for heading in ("Matrices", "Figures", "Cells", "GPU telemetry", "Physical limit", "Warnings",
                    "Server metrics", "Environment"):
        assert f">{heading}" in page
    assert page.count('src="data:image/png;base64,') == 5  # Fig. 1, Fig. 2, heatmap, E2E and TTFT boxes


def test_html_without_records_or_closed_cells_still_renders() -> None:
    run = make_run()
    run.cells[:] = [dataclasses.replace(c, records=()) for c in run.cells]
    page = render_html(run)
    assert page.count("data:image/png") == 3  # no per-request distributions without records
    assert "Matrices" not in render_html(RunResult())


def test_without_matplotlib_the_page_says_how_to_get_the_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    page = render_html(rich_run())
    assert "data:image/png" not in page and "Matrices" in page
    assert "the figures need matplotlib, not installed here: pip install &#x27;pytest-llmload[plots]&#x27;" in page
