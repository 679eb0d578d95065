"""File helpers shared by the report writers and baselines: atomic writes that never clobber foreign files."""

from __future__ import annotations

import os
import uuid
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
    # Not tempfile.mkstemp: its 0600 mode would survive the rename; open(..., "x") honours the umask.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
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
