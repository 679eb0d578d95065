"""`--llm-export FORMAT[,FORMAT...]`: the formats other tools read, written into the report folder.

    vllm-bench        vllm_bench         vllm-bench/<cell>/...-repeatN.json, as `vllm bench serve --save-result`
    github-benchmark  github_benchmark   github-benchmark-smaller.json / -bigger.json (github-action-benchmark)
    bencher           bencher            bencher.json (Bencher Metric Format)

The per-cell summaries (github-benchmark, bencher) share `cell_values`: a metric's value in each valid
repeat of a cell, in the unit shown. A failed or invalid repeat gives no value, as everywhere a number is
reported; a cell without a valid repeat is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..results import CellResult, RunResult
from ..vocabulary import METRICS

# (metric, stat) of the summaries, latencies first; direction and unit come from the vocabulary.
EXPORT_METRICS: tuple[tuple[str, str | None], ...] = (
    ("e2e", "p50"), ("e2e", "p95"), ("ttft", "p50"), ("ttft", "p95"), ("itl", "mean"), ("tpot", "mean"),
    ("tokens_per_s_per_user", "mean"), ("total_tokens_per_s", None), ("requests_per_s", None),
)


@dataclass(frozen=True, slots=True)
class CellValues:
    """One metric of one cell over its valid repeats, in the metric's shown unit."""

    cell: CellResult  # the first repeat (users, prompt size, max tokens)
    metric: str
    stat: str | None
    values: tuple[float, ...]

    @property
    def name(self) -> str:
        """E.g. 'e2e_p50' or 'total_tokens_per_s'."""
        return self.metric if self.stat is None else f"{self.metric}_{self.stat}"

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better

    @property
    def median(self) -> float:
        xs = sorted(self.values)
        mid = len(xs) // 2
        return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def cell_id(cell: CellResult) -> str:
    """How exports name a cell: u8-p63-m100 (open loop: r2-p63-m100, the rate in requests/s)."""
    head = f"r{cell.rate:g}" if cell.mode == "open" else f"u{cell.users}"
    return f"{head}-p{cell.prompt_tokens}-m{cell.max_tokens}"


def cell_values(run: RunResult) -> list[CellValues]:
    """Every exported metric of every cell with a valid repeat, cells in the order first measured."""
    by_cell: dict[str, list[CellResult]] = {}
    for c in run.cells:
        by_cell.setdefault(cell_id(c), []).append(c)
    out: list[CellValues] = []
    for repeats in by_cell.values():
        usable = [c for c in repeats if c.ok and c.valid]
        for metric, stat in EXPORT_METRICS:
            scale = METRICS[metric].scale
            values = tuple(v * scale for c in usable if (v := c.value(metric, stat)) is not None)
            if values:
                out.append(CellValues(repeats[0], metric, stat, values))
    return out


def _vllm_bench(run: RunResult, report_dir: Path) -> list[Path]:
    from .vllm_bench import write_vllm_bench  # noqa: PLC0415

    return write_vllm_bench(run, report_dir)


def _github(run: RunResult, report_dir: Path) -> list[Path]:
    from .github_benchmark import write_github_benchmark  # noqa: PLC0415

    return write_github_benchmark(run, report_dir)


def _bencher(run: RunResult, report_dir: Path) -> list[Path]:
    from .bencher import write_bencher  # noqa: PLC0415

    return [write_bencher(run, report_dir)]


EXPORTERS: dict[str, Callable[[RunResult, Path], list[Path]]] = {
    "vllm-bench": _vllm_bench,
    "github-benchmark": _github,
    "bencher": _bencher,
}
EXPORT_FORMATS = tuple(EXPORTERS)


def write_exports(run: RunResult, formats: Iterable[str], report_dir: Path | str) -> list[Path]:
    """Write each export format into `report_dir`; the paths written. Formats are independent: one that
    fails does not stop the others, and ReportWriteError (with the written paths) is raised after all."""
    from . import ReportWriteError  # noqa: PLC0415 - the package imports this module's names lazily

    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in EXPORTERS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; expected some of {', '.join(EXPORT_FORMATS)}")
    written: list[Path] = []
    errors: dict[str, BaseException] = {}
    for fmt in formats:
        try:
            written += EXPORTERS[fmt](run, Path(report_dir))
        except Exception as exc:  # collected and re-raised below, after the other formats
            errors[fmt] = exc
    if errors:
        raise ReportWriteError(written, errors)
    return written
