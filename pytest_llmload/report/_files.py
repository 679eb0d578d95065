"""File helpers shared by the report writers and baselines: atomic writes that never clobber foreign files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import ReportFileError

# Every JSON file we write starts with these keys, so a prefix of the file is enough to recognise it,
# even one truncated by a crash of an older writer.
GENERATOR = "pytest-llmload"
_MARKER = b'"generator": "pytest-llmload"'
_SNIFF_BYTES = 4096


def atomic_write_text(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same directory and `os.replace`.

    Readers therefore see either the old file or the complete new one, never a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def refuse_foreign(path: Path) -> None:
    """Raise ReportFileError if `path` exists, is not empty and was not written by pytest-llmload.

    Called before replacing a JSON file, so that a mistyped path (`--llm-save-baseline pyproject.toml`)
    cannot destroy somebody else's data.
    """
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise ReportFileError(path, "is a directory, not a pytest-llmload file")
    with path.open("rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    if head.strip() and _MARKER not in head:
        raise ReportFileError(path, "exists and is not a pytest-llmload file; refusing to overwrite it")
