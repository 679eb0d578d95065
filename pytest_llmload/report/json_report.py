"""`llmload.json`: the machine-readable report, and `read_report`, its validating reader.

Layout (SCHEMA_VERSION 1)::

    {"schema_version": 1, "generator": "pytest-llmload", "environment": {...}, "interrupted": false,
     "extra": {"server_starts": [...], "comparisons": [...]},
     "records": "requests.jsonl" | "inline", "records_sha256": "<hex>" (sidecar only),
     "cells": [CellResult.to_dict(include_records=False) (+ "records": [...] when inline), ...]}

The report directory's `llmload.json` keeps its raw per-request records in the sidecar
`requests.jsonl` beside it (one JSON object per line: {"cell": <index into cells>, **record}), so the
summary stays small enough to read by eye. Its SHA-256 is stored in the JSON, so a reader never pairs
a report with the records of another run. Baselines (`baseline.py`) use the same layout with the
records inline, because a baseline is one file that gets copied around.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ReportFileError
from ..results import CellResult, RequestRecord, RunResult
from ._files import GENERATOR, atomic_write_text, refuse_foreign

SCHEMA_VERSION = 1
REPORT_NAME = "llmload.json"
RECORDS_NAME = "requests.jsonl"
_CELL_FIELDS = ("users", "prompt_tokens", "max_tokens", "ok")


def _finite(value: Any) -> Any:
    """Replace NaN/inf (which JSON cannot carry) by None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(obj: Any, *, indent: int | None = 1) -> str:
    """JSON text; `default=str` because `extra` sections may hold values other modules chose."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False, default=str, ensure_ascii=False)


def run_document(run: RunResult, *, records: str) -> dict[str, Any]:
    """The JSON object of a run; `records` is "inline", or the sidecar's file name."""
    inline = records == "inline"
    return {
        # generator first: refuse_foreign() recognises our files by this prefix.
        "schema_version": SCHEMA_VERSION,
        "generator": GENERATOR,
        "environment": run.environment,
        "interrupted": run.interrupted,
        "extra": run.extra,
        "records": records,
        "cells": [c.to_dict(include_records=inline) for c in run.cells],
    }


def records_lines(run: RunResult) -> str:
    """The sidecar's text: one line per request, tagged with the index of its cell."""
    lines = (dumps({"cell": i, **r.to_dict()}, indent=None) for i, c in enumerate(run.cells) for r in c.records)
    return "".join(line + "\n" for line in lines)


def write_json(run: RunResult, path: Path | str) -> Path:
    """Write `run` as `path` (llmload.json) plus `requests.jsonl` beside it, each atomically.

    The sidecar is written first: a reader that sees the new JSON also finds the records it names.
    """
    path = Path(path)
    refuse_foreign(path)
    sidecar_text = records_lines(run)
    atomic_write_text(path.with_name(RECORDS_NAME), sidecar_text)
    return _write_summary(run, path, hashlib.sha256(sidecar_text.encode("utf-8")).hexdigest())


def _write_summary(run: RunResult, path: Path, records_sha256: str) -> Path:
    doc = run_document(run, records=RECORDS_NAME)
    doc["records_sha256"] = records_sha256
    return atomic_write_text(path, dumps(doc) + "\n")


class GrowingReport:
    """llmload.json and its sidecar for a run that grows cell by cell (the session's partial reports).

    Each cell's records are appended to `requests.jsonl` once (and fsynced), instead of rewriting every
    record after every cell; the small summary is rewritten atomically. A run that is not the same run
    grown (a cell replaced or removed) is written whole again.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._cells: list[int] = []  # id() of the cells whose records are in the sidecar, in order
        self._sha = hashlib.sha256()
        self._started = False

    def write(self, run: RunResult) -> Path:
        refuse_foreign(self.path)
        # The first write of this writer starts the sidecar afresh: the folder may hold a previous session's.
        if not self._started or [id(c) for c in run.cells[: len(self._cells)]] != self._cells or not self.path.exists():
            self._restart()
        new = run.cells[len(self._cells):]
        text = "".join(dumps({"cell": i, **r.to_dict()}, indent=None) + "\n"
                       for i, c in enumerate(new, start=len(self._cells)) for r in c.records)
        self._append(text)
        self._cells += [id(c) for c in new]
        return _write_summary(run, self.path, self._sha.hexdigest())

    def _restart(self) -> None:
        self._cells, self._sha, self._started = [], hashlib.sha256(), True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.with_name(RECORDS_NAME).write_bytes(b"")

    def _append(self, text: str) -> None:
        data = text.encode("utf-8")
        with open(self.path.with_name(RECORDS_NAME), "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        self._sha.update(data)


def write_inline(run: RunResult, path: Path | str) -> Path:
    """Write `run` as one self-contained JSON file with the records inline (the baseline format)."""
    path = Path(path)
    refuse_foreign(path)
    return atomic_write_text(path, dumps(run_document(run, records="inline")) + "\n")


def save_baseline(run: RunResult, path: Path | str) -> Path:
    """Write `run` as a baseline: the llmload.json layout with the per-request records inline.

    Refuses (ReportFileError) to replace an existing file that is not a pytest-llmload file.
    """
    return write_inline(run, path)


def load_baseline(path: Path | str, *, like: dict[str, Any] | None = None) -> RunResult:
    """Read a baseline: a baseline file or an llmload.json (with its requests.jsonl), a history
    (`history.sqlite[:label]`: its last sessions of the deployment of the environment `like`), or results
    of vLLM bench, GuideLLM or AIPerf (`report/imports.py`); ReportFileError if it is damaged."""
    from .history import load_history_baseline, split_spec  # noqa: PLC0415
    from .imports import is_foreign, read_foreign  # noqa: PLC0415

    if (spec := split_spec(str(path))) is not None:
        return load_history_baseline(spec[0], label=spec[1], like=like)
    if is_foreign(path):
        return read_foreign(path)
    return read_report(path)


# ---------------------------------------------------------------------------------------------- reading


def read_report(path: Path | str, *, records: bool = True) -> RunResult:
    """Read an llmload.json or a baseline; a directory means its llmload.json.

    Raises ReportFileError(path, problem) for anything that is not a complete pytest-llmload file of a
    known schema. With `records=False` the per-request records are not loaded (a missing or damaged
    sidecar is then no error). Never writes.
    """
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    doc = _load_json(path)
    _check_header(path, doc)
    cells = [_parse_cell(path, i, raw) for i, raw in enumerate(doc["cells"])]
    if records and doc.get("records") not in (None, "inline"):
        cells = _attach_sidecar(path, doc, cells)
    extra = doc.get("extra")
    return RunResult(environment=dict(doc["environment"]), cells=cells, interrupted=bool(doc["interrupted"]),
                     extra=dict(extra) if isinstance(extra, dict) else {})


def _load_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportFileError(path, "no such file") from None
    except UnicodeDecodeError:
        raise ReportFileError(path, "not a text file (not UTF-8); not a pytest-llmload report") from None
    except OSError as exc:
        raise ReportFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if not text.strip():
        raise ReportFileError(path, "is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # A pytest-llmload file that stops early is the common case (disk full, copied while written).
        what = "truncated or damaged" if GENERATOR in text[:4096] else "not JSON"
        raise ReportFileError(path, f"{what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def _check_header(path: Path, doc: Any) -> None:
    if not isinstance(doc, dict) or doc.get("generator") != GENERATOR:
        raise ReportFileError(path, "not a pytest-llmload report (no \"generator\": \"pytest-llmload\")")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ReportFileError(path, f"schema_version {version!r} is not supported (this pytest-llmload reads "
                                    f"{SCHEMA_VERSION}); re-create it with a matching version")
    for key, kind in (("environment", dict), ("interrupted", bool), ("cells", list)):
        if key not in doc:
            raise ReportFileError(path, f"missing field {key!r}")
        if not isinstance(doc[key], kind):
            raise ReportFileError(path, f"field {key!r} should be a {kind.__name__}, not {type(doc[key]).__name__}")


def _parse_cell(path: Path, index: int, raw: Any) -> CellResult:
    if not isinstance(raw, dict):
        raise ReportFileError(path, f"cells[{index}] is not an object")
    missing = [k for k in _CELL_FIELDS if k not in raw]
    if missing:
        raise ReportFileError(path, f"cells[{index}] misses field(s) {', '.join(missing)}")
    try:
        return CellResult.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ReportFileError(path, f"cells[{index}] is malformed: {type(exc).__name__}: {exc}") from None


def _attach_sidecar(path: Path, doc: dict[str, Any], cells: list[CellResult]) -> list[CellResult]:
    sidecar = path.with_name(str(doc["records"]))
    try:
        data = sidecar.read_bytes()
    except OSError:
        raise ReportFileError(sidecar, f"missing: {path.name} keeps its per-request records there") from None
    if doc.get("records_sha256") != hashlib.sha256(data).hexdigest():
        raise ReportFileError(sidecar, f"does not belong to {path} (checksum differs): damaged or from another run")
    per_cell: list[list[RequestRecord]] = [[] for _ in cells]
    for lineno, raw in _jsonl(sidecar, data):
        cell = raw.pop("cell", None)
        if not isinstance(cell, int) or not 0 <= cell < len(cells):
            raise ReportFileError(sidecar, f"line {lineno}: bad cell index {cell!r}")
        per_cell[cell].append(_parse_record(sidecar, lineno, raw))
    return [_with_records(c, recs) for c, recs in zip(cells, per_cell)]


def _jsonl(path: Path, data: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportFileError(path, f"line {lineno} is not JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise ReportFileError(path, f"line {lineno} is not an object")
        yield lineno, obj


def _parse_record(path: Path, lineno: int, raw: dict[str, Any]) -> RequestRecord:
    try:
        return RequestRecord.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ReportFileError(path, f"line {lineno} is not a request record: {exc}") from None


def _with_records(cell: CellResult, records: list[RequestRecord]) -> CellResult:
    return dataclasses.replace(cell, records=tuple(records))
