"""report.html: self-contained, escaped, with matrices, figures and optional sections; renders in a
real headless Chromium (skipped only when no Chromium binary is installed)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_llmload.report import write_reports
from pytest_llmload.report.html import render_html
from pytest_llmload.results import RunResult

from factories import make_run

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
HOSTILE = "<script>alert('x')</script>&"


def rich_run() -> RunResult:
    run = make_run(users=(1, 2, 4, 8), prompts=(31, 296, 2193), failed=((8, 2193),))
    run.environment["model"] = "Mistral-7B " + HOSTILE
    run.environment["server_args"] = {"dtype": "auto", "tensor_parallel_size": 1}
    run.cells[0].extra["gpu"] = {"util_pct": 97.5, "mem_used_gib": 70.1, "name": HOSTILE}
    run.cells[1].extra["physical_limit"] = {"bound": "memory bandwidth", "percent": 71.2}
    run.cells[2].extra["warnings"] = ["start spread 0.4 s > 0.1 s", HOSTILE]
    run.cells[3].extra["server_metrics"] = {"num_preemptions": 0, "gpu_cache_usage_perc": 0.42}
    return run


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


def _chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def _run_chromium(binary: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,2000"]
    return subprocess.run(base + list(args), capture_output=True, text=True, timeout=180, check=False)


def test_html_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip(f"no Chromium binary on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
                    "install it with `apt-get install -y chromium`")
    (page,) = write_reports(rich_run(), tmp_path / "report", formats=("html",))
    url = page.resolve().as_uri()
    dom = _run_chromium(binary, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert html.count("<table") >= 7 + 1 + 4 + 1  # matrices, cells, four extra sections, environment
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 5
    assert "Time to resolve (s), E2E mean" in html and "&lt;script&gt;" in html

    shot = tmp_path / "shot.png"
    result = _run_chromium(binary, tmp_path, f"--screenshot={shot}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
