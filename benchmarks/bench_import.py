"""What the installed plugin costs a pytest run that does not use it: import time, and whole runs.

1. `python -X importtime -c "import pytest; import pytest_llmload.plugin"`: the cumulative time of the
   top-level `pytest_llmload.plugin` import, i.e. the plugin and everything it imports that pytest has
   not imported already (pytest-benchmark, loaded by pytest too, is not counted in our favour). Median
   over the runs; the modules costing most in the median run are listed.
2. Whole processes, run in turn A B A B ... so that a drift of the machine's speed hits both:
   `pytest --version --version` and a one-test project, each with the plugin and with `-p no:llmload`.
   The cost is the median of the paired differences. (A single `--version` is answered by pytest before
   it loads any plugin, so it cannot show a plugin's cost; the doubled form loads them and lists them.)

    .venv/bin/python benchmarks/bench_import.py            # about 1 minute; writes results/import_time.{json,md}
    .venv/bin/python benchmarks/bench_import.py --runs 5   # quicker, noisier
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET_MS = 150.0
LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def _env() -> dict[str, str]:
    """This checkout first on the path, so the plugin measured is the one beside this script."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def import_profile() -> tuple[float, list[tuple[str, float]]]:
    """One run: (ms of the top-level plugin import, [(module, self ms)] of modules imported under it)."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import pytest; import pytest_llmload.plugin"],
                         env=_env(), capture_output=True, text=True, check=True).stderr
    rows = [(int(m[1]), int(m[2]), len(m[3]), m[4]) for m in map(LINE.match, out.splitlines()) if m]
    # importtime prints children before their parent: the plugin's subtree is the block ending at its line.
    end = next(i for i, r in enumerate(rows) if r[3] == "pytest_llmload.plugin" and r[2] == 1)
    start = end
    while start > 0 and rows[start - 1][2] > 1:
        start -= 1
    subtree = [(name, self_us / 1000) for self_us, _cum, _depth, name in rows[start:end + 1]]
    return rows[end][1] / 1000, subtree


def timed(cmd: list[str], cwd: Path) -> float:
    """Wall seconds of one whole process (perf_counter around start to exit)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - t0


def paired(cmd: list[str], cwd: Path, runs: int) -> dict[str, Any]:
    """Run the command with and without the plugin in turn; medians and the median paired difference."""
    timed(cmd, cwd), timed([*cmd, "-p", "no:llmload"], cwd)  # warm the file cache, unmeasured
    with_plugin, without = [], []
    for _ in range(runs):
        with_plugin.append(timed(cmd, cwd))
        without.append(timed([*cmd, "-p", "no:llmload"], cwd))
    diffs = [(a - b) * 1000 for a, b in zip(with_plugin, without)]
    return {"command": " ".join(cmd[2:]), "runs": runs,
            "with_plugin_ms": _spread([x * 1000 for x in with_plugin]),
            "without_plugin_ms": _spread([x * 1000 for x in without]),
            "cost_ms": _spread(diffs)}


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 1), "median": round(statistics.median(values), 1), "max": round(max(values), 1)}


def measure(runs: int) -> dict[str, Any]:
    profiles = [import_profile() for _ in range(runs)]
    totals = [p[0] for p in profiles]
    median_run = sorted(profiles, key=lambda p: p[0])[len(profiles) // 2]
    heaviest = sorted(median_run[1], key=lambda m: -m[1])[:10]
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "test_one.py").write_text("def test_one():\n    assert True\n")
        pytest_cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
        version = paired([*pytest_cmd, "--version", "--version"], project, runs)
        one_test = paired([*pytest_cmd, "-q", "test_one.py"], project, runs)
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load_average": [round(x, 2) for x in os.getloadavg()]},
        "target_ms": TARGET_MS,
        "plugin_import_ms": _spread(totals),
        "heaviest_modules_ms": [(name, round(ms, 2)) for name, ms in heaviest],
        "pytest_version": version,
        "one_test_run": one_test,
    }


def render(r: dict[str, Any]) -> str:
    imp = r["plugin_import_ms"]
    rows = [f"| {name} | {s['min']} / **{s['median']}** / {s['max']} |" for name, s in (
        ("plugin import (`-X importtime`, after `import pytest`)", imp),
        ("`pytest --version --version`, with the plugin", r["pytest_version"]["with_plugin_ms"]),
        ("`pytest --version --version`, `-p no:llmload`", r["pytest_version"]["without_plugin_ms"]),
        ("`pytest --version --version`: cost of the plugin (paired difference)", r["pytest_version"]["cost_ms"]),
        ("one-test project, with the plugin", r["one_test_run"]["with_plugin_ms"]),
        ("one-test project, `-p no:llmload`", r["one_test_run"]["without_plugin_ms"]),
        ("one-test project: cost of the plugin (paired difference)", r["one_test_run"]["cost_ms"]),
    )]
    heavy = ", ".join(f"`{name}` {ms} ms" for name, ms in r["heaviest_modules_ms"])
    m = r["machine"]
    return "\n".join([
        f"# Import time of the plugin ({r['date']})",
        "",
        f"{m['cpus']} CPUs, Python {m['python']}, {m['platform']}; load average {m['load_average']}. "
        f"{r['pytest_version']['runs']} runs each; milliseconds, min / **median** / max.",
        "",
        "| what | ms |",
        "|---|---|",
        *rows,
        "",
        f"Target: plugin import under {r['target_ms']:g} ms of its own: "
        f"{'met' if imp['median'] < r['target_ms'] else 'MISSED'} (median {imp['median']} ms).",
        "",
        f"Largest self times under the plugin's import (median run): {heavy}.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    result = measure(args.runs)
    text = render(result)
    print(text)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "import_time.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "import_time.md").write_text(text)


if __name__ == "__main__":
    main()
