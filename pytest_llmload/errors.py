"""The errors pytest-llmload raises: the whole tree, every class defined here.

    LLMLoadError                     base of everything below
    ├── ConfigError                  a bad option, ini value, SLO key or config file (shown as a usage error)
    ├── ServerError                  the vLLM server we launched misbehaved
    │   └── ServerStartError         it exited or never became ready; carries the log tail
    ├── SetupError                   the tool is set up so that it cannot measure (a fault of the session,
    │   │                            never a failed cell of the server under test): a server on loopback for
    │   │                            load actors on other nodes, load workers that cannot start, a missing
    │   │                            install; the message says the fix
    │   └── ServerStoppedError       a measurement asked of a server the session already stopped, or gone
    ├── LoadWorkerError              a load worker crashed or raised while it ran a cell (the cell fails:
    │                                cause "client"); also a RuntimeError
    ├── PromptSizingError            prompts of the asked size could not be built; also a RuntimeError
    ├── InvalidMeasurement           an objective or gate was asked of a cell the client could not measure
    │                                truthfully (invalid cell): not a pass, not a miss; carries the reasons
    ├── Inconclusive                 a capacity verdict hinges on a probe too close to the limit (a skip)
    ├── ReportFileError              a report / baseline file is damaged, foreign or of another schema
    ├── ReportWriteError             some report formats could not be written; carries what was written
    └── BaselineMismatchError        a comparison of runs of different models or layouts, not forced
    SLOViolation (AssertionError)    an objective was missed: which cell, which metric, observed vs limit
    CellFailedError (LLMLoadError, AssertionError)
                                     a cell a test asked for (`llm_load(...)`) could not run: the test fails
    InvalidMeasurementWarning        (UserWarning) an invalid cell was used anyway

SLOViolation subclasses AssertionError, not LLMLoadError, so pytest reports a missed objective as a
test *failure* rather than an error. A server that dies while a cell runs is not an exception: the cell
is recorded as failed with "server died (exit code ...)" and the log tail (cause "server": every failed
cell says whose fault it was, `CellResult.cause`), and the run goes on; a test
that asked for that cell through `llm_load` fails with CellFailedError (unless it passed allow_failed=True).
"""

from __future__ import annotations

from pathlib import Path


class LLMLoadError(Exception):
    """Base class of every error pytest-llmload raises on purpose."""


class ConfigError(LLMLoadError, ValueError):
    """A bad option, ini value, marker argument or configuration file; the message names it."""


class ServerError(LLMLoadError):
    """The server we started did something we cannot work with."""

    def __init__(self, message: str, *, log_tail: str = "", returncode: int | None = None) -> None:
        self.log_tail = log_tail
        self.returncode = returncode
        if log_tail:
            message = f"{message}\n--- last lines of the server log ---\n{log_tail}"
        super().__init__(message)


class ServerStartError(ServerError):
    """The server exited during start-up or was not ready before the deadline."""


class SetupError(LLMLoadError):
    """The session is set up so that it cannot measure (its own fault, not the server's); says the fix."""


class ServerStoppedError(SetupError):
    """A measurement was asked of a server that is no longer up: stopped by the session, or gone before
    the measurement started. Never recorded as a failed cell of the server under test."""


class LoadWorkerError(LLMLoadError, RuntimeError):
    """A load worker failed (crashed, raised) while it ran a cell: that cell fails with this message."""


class PromptSizingError(LLMLoadError, RuntimeError):
    """Prompts of the requested size could not be built (tokenizer unreachable, size impossible)."""


class Inconclusive(LLMLoadError):
    """The verdict hinges on a measurement too close to the limit to call; the plugin reports a skip."""


class InvalidMeasurement(LLMLoadError):
    """A cell's numbers cannot be vouched for (see `CellResult.invalid_reasons`), so an objective or gate on
    it can neither pass nor fail; the plugin reports the test as an error, not as a failure."""


class InvalidMeasurementWarning(UserWarning):
    """An invalid cell was used anyway (`--llm-allow-invalid`), or by a test's own asserts."""


class ReportFileError(LLMLoadError):
    """A report or baseline file cannot be read: damaged, foreign, or of an unknown schema."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ReportWriteError(LLMLoadError):
    """Some report formats could not be written; `.written` lists those that were, `.errors` the rest."""

    def __init__(self, written: list[Path], errors: dict[str, BaseException]) -> None:
        self.written = written
        self.errors = errors
        details = "; ".join(f"{fmt}: {type(e).__name__}: {e}" for fmt, e in errors.items())
        super().__init__(f"could not write {len(errors)} report format(s): {details}")


class BaselineMismatchError(LLMLoadError):
    """The runs compared are of different models or layouts (use --llm-compare-force to compare anyway)."""


class SLOViolation(AssertionError):
    """A service-level objective was missed; the message says cell, metric, observed value and limit."""


class CellFailedError(LLMLoadError, AssertionError):
    """A cell a test asked for could not run (the server failed it): the test fails, with the cause and the
    server log tail. `llm_load(..., allow_failed=True)` hands the failed cell to the test instead."""
