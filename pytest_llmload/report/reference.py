"""Reference matrices to hold a run against: the study's published tables or an earlier run.

The study (Bendi-Ouis, Dutartre, Hinaut, Inria Bordeaux) gives, for seven model/GPU layouts, the
seconds to resolve a request for N simultaneous users x prompt sizes; pytest-llmload ships them as
`data/study-tables.json`. `render_ratio` prints measured E2E mean / reference per cell, so < 1 means
faster than the reference.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from tabulate import tabulate

from ..errors import ConfigError, ReportFileError
from .json_report import read_report
from .table import format_value, is_number, matrix, model_name
from ..results import RunResult

_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X")


@dataclass(frozen=True, slots=True)
class ReferenceMatrix:
    """E2E seconds per (users, prompt tokens); None where the reference has no value (the study's "-")."""

    name: str
    users: tuple[int, ...]
    prompt_tokens: tuple[int, ...]
    seconds: tuple[tuple[float | None, ...], ...]
    model: str = ""
    quantization: str | None = None
    gpus: str = ""
    notes: tuple[str, ...] = ()  # what the reference's file held that is not a cell (imports), named
    max_tokens: int | None = None  # tokens each request generated, where the reference says (imports)
    imported: bool = False  # read from another tool's results: its cells that match nothing are named

    def value(self, users: int, prompt_tokens: int) -> float | None:
        """The reference seconds for this cell, None if it has none."""
        try:
            return self.seconds[self.users.index(users)][self.prompt_tokens.index(prompt_tokens)]
        except ValueError:
            return None

    @property
    def description(self) -> str:
        """E.g. 'Table II: Codestral-22B, AWQ 4-bit, 1x A100 40GB'."""
        details = ", ".join(x for x in (self.model, self.quantization or "", self.gpus) if x)
        return f"{self.name}: {details}" if details else self.name


def _study_path(path: Path | str | None) -> Any:
    return Path(path) if path is not None else resources.files("pytest_llmload").joinpath("data/study-tables.json")


def load_study_tables(path: Path | str | None = None) -> dict[str, ReferenceMatrix]:
    """The study's tables keyed by their number ("I".."VII"); `path` defaults to the shipped copy."""
    source = _study_path(path)
    try:
        doc = json.loads(source.read_text(encoding="utf-8"))
        return {str(t["table"]): _study_matrix(t) for t in doc["tables"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportFileError(source, f"not a study-tables file: {type(exc).__name__}: {exc}") from None


def _study_matrix(t: dict[str, Any]) -> ReferenceMatrix:
    seconds = tuple(tuple(None if v is None else float(v) for v in row) for row in t["seconds"])
    users, prompts = tuple(int(u) for u in t["users"]), tuple(int(p) for p in t["prompt_tokens"])
    if len(seconds) != len(users) or any(len(row) != len(prompts) for row in seconds):
        raise ValueError(f"table {t['table']}: seconds do not match the users x prompt_tokens axes")
    return ReferenceMatrix(name=f"Table {t['table']}", users=users, prompt_tokens=prompts, seconds=seconds,
                           model=str(t.get("model") or ""), quantization=t.get("quantization"),
                           gpus=str(t.get("gpus") or ""))


def reference_from_run(run: RunResult, name: str) -> ReferenceMatrix:
    """The E2E mean matrix of a run (e.g. a baseline) as a reference."""
    users, prompts, rows = matrix(run, "e2e", "mean")
    # Only measurements are references: a cell that failed, was not measured or is invalid has none.
    seconds = tuple(tuple(v if v is not None and is_number(v) else None for v in row) for row in rows)
    return ReferenceMatrix(name=name, users=tuple(users), prompt_tokens=tuple(prompts), seconds=seconds,
                           model=model_name(run.environment))


def reference_from(path_or_name: Path | str) -> ReferenceMatrix:
    """A reference from a baseline / llmload.json path, or a study table by number ("II", "table vii")
    or by a model-ish name ("Mistral-7B", "codestral awq", "llama 70b").

    ConfigError when the name matches no table or several (the message lists them).
    """
    from .history import load_history_baseline, split_spec  # noqa: PLC0415
    from .imports import NOTES_KEY, is_foreign, read_foreign  # noqa: PLC0415

    path = Path(path_or_name)
    if (spec := split_spec(str(path_or_name))) is not None:
        return reference_from_run(load_history_baseline(spec[0], label=spec[1]), str(path_or_name))
    if path.exists() and is_foreign(path):
        run = read_foreign(path)
        matrix_ = reference_from_run(run, str(path))
        outputs = {c.max_tokens for c in run.cells}
        return dataclasses.replace(matrix_, notes=tuple(run.extra.get(NOTES_KEY) or ()), imported=True,
                                   max_tokens=outputs.pop() if len(outputs) == 1 else None)
    if path.exists():
        return reference_from_run(read_report(path, records=False), str(path))
    return _study_by_name(str(path_or_name))


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _study_by_name(query: str) -> ReferenceMatrix:
    tables = load_study_tables()
    ident = re.sub(r"^\s*table\s*", "", query, flags=re.IGNORECASE).strip().upper()
    if ident in tables:
        return tables[ident]
    words = [_norm(w) for w in re.split(r"[\s,/_]+", query) if _norm(w)]
    found = [t for t in tables.values() if words and all(w in _norm(t.description) for w in words)]
    if len(found) == 1:
        return found[0]
    listing = "; ".join(t.description for t in (found or tables.values()))
    problem = "matches several study tables" if found else "is neither a report file nor a study table"
    raise ConfigError(f"reference {query!r} {problem}: {listing}")


def ratio_matrix(run: RunResult, reference: ReferenceMatrix) -> tuple[list[int], list[int], list[list[float | None]]]:
    """Measured E2E mean / reference seconds over the run's cells; None where either is missing."""
    users, prompts, rows = matrix(run, "e2e", "mean")
    if _other_output(run, reference):
        return users, prompts, [[None for _ in prompts] for _ in users]
    ratios = [[None if v is None or not (ref := reference.value(u, p)) else v / ref if is_number(v) else v
               for p, v in zip(prompts, row)]
              for u, row in zip(users, rows)]
    return users, prompts, ratios


def render_ratio(run: RunResult, reference: ReferenceMatrix, fmt: str = "simple") -> str:
    """The ratio table with a title; values below 1 are faster than the reference."""
    users, prompts, ratios = ratio_matrix(run, reference)
    model = model_name(run.environment)
    title = f"E2E mean{' of ' + model if model else ''} / {reference.description} (< 1: faster than the reference)"
    if not users:
        return f"{title}\n(no closed-loop cells)"
    rows = [[str(u), *(f"{r:.2f}" if r is not None and is_number(r) else format_value(r, "e2e") for r in row)]
            for u, row in zip(users, ratios)]
    headers = ["users \\ prompt tokens", *(str(p) for p in prompts)]
    table = tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True, stralign="right")
    return f"{title}\n{table}" + "".join(f"\n{line}" for line in reference_notes(run, reference))


def reference_notes(run: RunResult, reference: ReferenceMatrix) -> list[str]:
    """What the reference holds that no cell of the run matches, and what its file held that is no cell."""
    users, prompts, _ = matrix(run, "e2e", "mean")
    unmatched = [f"users={u} prompt_tokens={p}" for i, u in enumerate(reference.users)
                 for j, p in enumerate(reference.prompt_tokens)
                 if reference.imported and reference.seconds[i][j] is not None and (u not in users or p not in prompts)]
    out = [f"in the reference only (no cell of this run): {', '.join(unmatched)}"] if unmatched else []
    if _other_output(run, reference):
        out.append(f"the reference's requests generate {reference.max_tokens} tokens, this run's "
                   f"{sorted({c.max_tokens for c in run.cells})}: no cell is compared")
    return out + [f"reference: {note}" for note in reference.notes]


def _other_output(run: RunResult, reference: ReferenceMatrix) -> bool:
    return reference.max_tokens is not None and any(c.max_tokens != reference.max_tokens for c in run.cells)
