"""report.html renders in a real headless Chromium (skipped only when no Chromium binary is installed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_llmload.report import write_reports

from factories import rich_run

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


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
