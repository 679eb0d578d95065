"""Service-level objectives: parse them, check a cell against them, say clearly what was missed.

An objective is a keyword, the way a platform team writes it down:

    e2e_p95_s=20                  E2E p95 below 20 s             (latency: upper limits)
    ttft_p99_ms=500               TTFT p99 below 500 ms
    itl_mean_ms=50, tpot_p50_ms=40
    tokens_per_s_per_user_min=20  every user got at least 20 tok/s  (throughput: lower limits)
    tokens_per_s_per_user_p50=20  the median user got at least 20 tok/s
    total_tokens_per_s=1000       the cell produced at least 1000 tok/s in total
    requests_per_s=2
    error_rate_max=0.01           at most 1 % of requests failed   (default: 0, every request must succeed)
    startup_s=120                 the server was ready within 120 s of its launch   (run-level: the start
    first_ttft_ms=500             the first request after ready had its first token within 500 ms   the
                                  cell was measured on; not measured for an attached server)

    ttfc_p95_ms=800               time to the first answer token (after any reasoning)
    reasoning_tokens_p95=2000     reasoning tokens per request
    prefix_cache_hit_rate_min=0.5 the server found half the cell's prompt tokens in its prefix cache
    goodput_min=0.95              95 % of requests met the per-request limits `goodput_ttft_ms=`,
                                  `goodput_tpot_ms=` (given with it; else those the cell was run with)

Selectors say which cells an objective is about: `users=32` (or a list), `prompt_tokens=480` (or a list),
`max_tokens=100`, `turns=4` (conversations), `cache=cold|warm|uncontrolled`, `workload=NAME` (a replayed
trace); `name=` labels it; `min_users=64` turns it into a capacity objective ("the server holds at least
64 users while meeting the rest").
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .errors import ConfigError, InvalidMeasurement, InvalidMeasurementWarning, SLOViolation
from .vocabulary import (ERROR_RATE_KEY, OBJECTIVE_KEY_HELP, RUN_METRICS, SERVER_START, Distribution,
                         goodput_of, parse_limit_key)

SELECTORS = ("users", "prompt_tokens", "max_tokens", "name", "min_users", "turns", "cache", "workload",
             "goodput_ttft_ms", "goodput_tpot_ms")
CACHE_STATES = ("cold", "warm", "uncontrolled")
KEY_HELP = OBJECTIVE_KEY_HELP + "; selectors " + ", ".join(SELECTORS)


class Judged(Protocol):
    """What an objective reads of a cell (`results.CellResult`)."""

    @property
    def users(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def max_tokens(self) -> int: ...
    @property
    def ok(self) -> bool: ...
    @property
    def error(self) -> str | None: ...
    @property
    def valid(self) -> bool: ...
    @property
    def invalid_reasons(self) -> tuple[str, ...]: ...
    @property
    def stats(self) -> Any: ...
    @property
    def label(self) -> str: ...


# Who is told every observed value (the pytest plugin: JUnit properties of the running test), and whether
# an invalid cell may be checked anyway (--llm-allow-invalid). Context variables, not module lists: set for
# the duration of one test call by `observing`.
_OBSERVER: ContextVar[Callable[[SLO, Judged], None] | None] = ContextVar("llmload_slo_observer", default=None)
_ALLOW_INVALID: ContextVar[bool] = ContextVar("llmload_allow_invalid", default=False)


@contextlib.contextmanager
def observing(callback: Callable[[SLO, Judged], None] | None = None, *, allow_invalid: bool = False
              ) -> Iterator[None]:
    """Within the block, every `SLO.check` first calls `callback(slo, cell)`; with `allow_invalid` an
    invalid cell is checked with a warning instead of raising InvalidMeasurement."""
    token, allow = _OBSERVER.set(callback), _ALLOW_INVALID.set(allow_invalid)
    try:
        yield
    finally:
        _OBSERVER.reset(token)
        _ALLOW_INVALID.reset(allow)


def require_valid(cell: Judged, what: str) -> None:
    """Raise InvalidMeasurement for an invalid cell (or warn, where invalid cells are allowed)."""
    if cell.valid:
        return
    message = invalid_message(cell, what)
    if not _ALLOW_INVALID.get():
        raise InvalidMeasurement(message)
    warnings.warn(InvalidMeasurementWarning(message), stacklevel=3)


def invalid_message(cell: Judged, what: str) -> str:
    """'invalid measurement: <what> cannot be judged in cell ...' and the reasons, one per line."""
    reasons = "\n".join(f"  - {r}" for r in cell.invalid_reasons)
    return f"invalid measurement: {what} cannot be judged in cell {cell.label}:\n{reasons}"


@dataclass(frozen=True)
class Objective:
    """One limit on one statistic of one metric."""

    key: str  # as the user wrote it, e.g. "e2e_p95_s"
    metric: str  # a vocabulary metric name, or "error_rate"
    stat: str | None  # p95, mean, min...; None for scalar metrics
    limit: float  # in base units: seconds, tokens/s, fraction
    upper: bool  # True: observed must stay at or below the limit; False: at or above
    unit: str  # for messages: "s", "ms", "tok/s", "req/s", ""
    scale: float = 1.0  # display value = base value * scale (1000 for ms)
    goodput_limits: tuple[float | None, float | None] | None = None  # goodput: per-request TTFT, TPOT (s)

    @property
    def property_name(self) -> str:
        """The JUnit property name, which says the unit of `property_value`: llm_<key> (the key names its
        unit: `_s`, `_ms`, `_per_s`), and `llm_error_rate_max_fraction` for the error rate."""
        return "llm_error_rate_max_fraction" if self.metric == "error_rate" else f"llm_{self.key}"

    def property_value(self, base_value: float | None) -> str:
        """An observed value as the JUnit property carries it: in the unit of `property_name` (ms for a
        `_ms` key), "n/a" when it could not be computed."""
        if base_value is None:
            return "n/a"
        return f"{base_value * self.scale:.6g}"

    def observed(self, cell: Judged) -> float | None:
        """The cell's value of this objective's statistic in base units, None if it cannot be computed."""
        if self.metric in RUN_METRICS:
            return _server_start_value(cell, RUN_METRICS[self.metric].key)
        stats = cell.stats
        if stats is None:
            return None
        if self.metric == "goodput" and self.goodput_limits is not None:
            return goodput_of(getattr(cell, "records", ()), *self.goodput_limits)
        if self.metric == "error_rate":
            total = stats.requests_ok + stats.requests_failed
            return stats.requests_failed / total if total else None
        value = getattr(stats, self.metric)
        if isinstance(value, Distribution):
            return float(getattr(value, self.stat or "mean"))
        return None if value is None else float(value)

    def met_by(self, observed: float | None) -> bool:
        if observed is None:
            return False
        return observed <= self.limit if self.upper else observed >= self.limit

    def headroom(self, observed: float) -> float:
        """Relative distance to the limit, positive when met: (limit - x)/limit, or (x - limit)/limit."""
        if self.limit == 0:
            return 0.0 if observed == 0 else (-1.0 if self.upper else 1.0)
        return (self.limit - observed) / self.limit if self.upper else (observed - self.limit) / self.limit

    def show(self, base_value: float | None) -> str:
        if base_value is None:
            return "n/a"
        if self.metric == "error_rate":
            return f"{base_value:.1%}"
        return f"{base_value * self.scale:.4g} {self.unit}".rstrip()

    def describe(self) -> str:
        """E.g. `e2e p95 <= 20 s`."""
        name = self.metric + (f" {self.stat}" if self.stat else "")
        return f"{name} {'<=' if self.upper else '>='} {self.show(self.limit)}"


def _server_start_value(cell: Judged, key: str) -> float | None:
    """A run-level value of the server start the cell was measured on (`extra["server_start"]`)."""
    section = (getattr(cell, "extra", None) or {}).get(SERVER_START)
    value = section.get(key) if isinstance(section, dict) else None
    return None if value is None else float(value)


def parse_objective(key: str, value: Any, where: str) -> Objective:
    """Turn `e2e_p95_s=20` into an Objective; ConfigError naming `where` and the key otherwise."""
    try:
        limit = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}={value!r} is not a number") from None
    if limit < 0 or limit != limit:
        raise ConfigError(f"{where}: {key}={value!r} must be a number of 0 or more")
    named = parse_limit_key(key)
    if named is None:
        raise ConfigError(f"{where}: unknown objective {key!r}; objectives are {KEY_HELP}")
    if key == ERROR_RATE_KEY and limit > 1:
        raise ConfigError(f"{where}: {ERROR_RATE_KEY}={value!r} is a fraction between 0 and 1")
    return Objective(key, named.metric, named.stat, limit / named.scale, named.upper, named.unit, named.scale)


def _int_set(value: Any, key: str, where: str) -> frozenset[int] | None:
    if value is None:
        return None
    items = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
    try:
        out = frozenset(int(v) for v in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}={value!r} must be a whole number or a list of them") from None
    if not out or min(out) < 1:
        raise ConfigError(f"{where}: {key}={value!r} must be 1 or more")
    return out


@dataclass(frozen=True)
class SLO:
    """A set of objectives and the cells they apply to."""

    objectives: tuple[Objective, ...]
    users: frozenset[int] | None = None
    prompt_tokens: frozenset[int] | None = None
    max_tokens: int | None = None
    name: str | None = None
    min_users: int | None = None
    turns: int | None = None
    cache: str | None = None
    workload: str | None = None
    source: str = ""  # where it was declared, for messages
    error_rate: Objective = field(default_factory=lambda: parse_objective(ERROR_RATE_KEY, 0, ""))
    error_rate_given: bool = False  # error_rate_max was written (else the default: every request succeeds)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], *, where: str) -> SLO:
        """Parse marker / assert_slo / config keywords; unknown keys are a ConfigError."""
        objectives = [parse_objective(k, v, where) for k, v in kwargs.items() if k not in SELECTORS]
        explicit_errors = [o for o in objectives if o.metric == "error_rate"]
        objectives = [o for o in objectives if o.metric != "error_rate"]
        min_users = kwargs.get("min_users")
        if not objectives and not explicit_errors:
            raise ConfigError(f"{where}: no objective given; objectives are {KEY_HELP}")
        max_tokens = _int_set(kwargs.get("max_tokens"), "max_tokens", where)
        objectives = _with_goodput_limits(objectives, kwargs, where)
        turns = _int_set(kwargs.get("turns"), "turns", where)
        cache = None if kwargs.get("cache") is None else str(kwargs["cache"])
        if cache is not None and cache not in CACHE_STATES:
            raise ConfigError(f"{where}: cache={cache!r}; expected one of {', '.join(CACHE_STATES)}")
        return cls(
            turns=None if turns is None else min(turns),
            cache=cache,
            workload=None if kwargs.get("workload") is None else str(kwargs["workload"]),
            objectives=tuple(objectives),
            users=_int_set(kwargs.get("users"), "users", where),
            prompt_tokens=_int_set(kwargs.get("prompt_tokens"), "prompt_tokens", where),
            max_tokens=None if max_tokens is None else min(max_tokens),
            name=None if kwargs.get("name") is None else str(kwargs["name"]),
            min_users=None if min_users is None else min(_int_set(min_users, "min_users", where) or {1}),
            source=where,
            error_rate=explicit_errors[0] if explicit_errors else parse_objective(ERROR_RATE_KEY, 0, where),
            error_rate_given=bool(explicit_errors),
        )

    @property
    def start_objectives(self) -> tuple[Objective, ...]:
        """The objectives on the server's start (`startup_s`, `first_ttft_ms`): judged once per start."""
        return tuple(o for o in self.objectives if o.metric in RUN_METRICS)

    def cell_part(self) -> SLO | None:
        """This objective without its start objectives: what cells are judged on; None when it asks
        nothing of a cell (a start-up objective alone measures no cell)."""
        objectives = tuple(o for o in self.objectives if o.metric not in RUN_METRICS)
        if not objectives and not self.error_rate_given and not self.min_users:
            return None
        return replace(self, objectives=objectives)

    def start_misses(self, starts: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
        """One line per missed start objective and start: `(name, start)` pairs, e.g. ("start 1 of A",
        {"startup_s": 28.8, "health_s": 27.9, "first_ttft_s": 0.4})."""
        lines = []
        for name, start in starts:
            for objective in self.start_objectives:
                value = start.get(RUN_METRICS[objective.metric].key)
                observed = None if value is None else float(value)
                if not objective.met_by(observed):
                    lines.append(f"{name}: {objective.metric}: observed {objective.show(observed)}, limit "
                                 f"{'<=' if objective.upper else '>='} {objective.show(objective.limit)}"
                                 f" ({start_phases(start)})")
        return lines

    @property
    def all_objectives(self) -> tuple[Objective, ...]:
        return (*self.objectives, self.error_rate)

    def applies_to(self, cell: Judged) -> bool:
        """Whether the selectors match this cell (an unset selector matches every cell)."""
        return ((self.users is None or cell.users in self.users)
                and (self.prompt_tokens is None or cell.prompt_tokens in self.prompt_tokens)
                and (self.max_tokens is None or cell.max_tokens == self.max_tokens)
                and (self.turns is None or getattr(cell, "turns", 1) == self.turns)
                and (self.cache is None or getattr(cell, "cache", "") == self.cache)
                and (self.workload is None or getattr(cell, "workload", "") == self.workload))

    def evaluate(self, cell: Judged) -> list[tuple[Objective, float | None, bool]]:
        """(objective, observed, met) for every objective, the error-rate objective included."""
        return [(o, o.observed(cell), o.met_by(o.observed(cell))) for o in self.all_objectives]

    def misses(self, cell: Judged) -> list[str]:
        """Readable lines, one per missed objective; empty when all are met."""
        if not cell.ok:
            return [f"the cell could not run: {cell.error}"]
        lines = []
        for objective, observed, met in self.evaluate(cell):
            if not met:
                lines.append(_miss_line(cell, objective, observed))
        return lines

    def check(self, cell: Judged) -> None:
        """Raise SLOViolation if the cell misses any objective. Observers (the plugin's JUnit properties)
        are told every observed value first."""
        observer = _OBSERVER.get()
        if observer is not None:
            observer(self, cell)
        require_valid(cell, f"SLO {self.describe()}")
        misses = self.misses(cell)
        if misses:
            raise SLOViolation(violation_message(self, cell, misses))

    def describe(self) -> str:
        parts = [o.describe() for o in self.objectives]
        if self.error_rate.limit > 0 or not parts:
            parts.append(self.error_rate.describe())
        label = f"{self.name}: " if self.name else ""
        return label + ", ".join(parts)

    @property
    def title(self) -> str:
        """How the objective is named as a test item: its `name`, else what it asks and of which cells,
        e.g. `e2e p95 <= 20 s at users=32 prompt_tokens=31,63` or `at least 64 users with e2e p95 <= 20 s`."""
        if self.name:
            return self.name
        what = SLO(self.objectives, error_rate=self.error_rate).describe()
        if self.min_users:
            what = f"at least {self.min_users} users with {what}"
        where = [f"{key}={','.join(str(v) for v in sorted(values))}"
                 for key, values in (("users", None if self.min_users else self.users),
                                     ("prompt_tokens", self.prompt_tokens)) if values]
        if self.max_tokens is not None:
            where.append(f"max_tokens={self.max_tokens}")
        where += [f"{key}={value}" for key, value in (("turns", self.turns), ("cache", self.cache),
                                                      ("workload", self.workload)) if value is not None]
        return f"{what} at {' '.join(where)}" if where else what


def _with_goodput_limits(objectives: list[Objective], kwargs: Mapping[str, Any], where: str) -> list[Objective]:
    """`goodput_ttft_ms=` / `goodput_tpot_ms=` are the per-request limits of a `goodput_min` objective."""
    limits: list[float | None] = []
    for key in ("goodput_ttft_ms", "goodput_tpot_ms"):
        value = kwargs.get(key)
        if value is None:
            limits.append(None)
            continue
        try:
            limits.append(float(value) / 1000.0)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key}={value!r} is not a number of milliseconds") from None
    if limits == [None, None]:
        return objectives
    if not any(o.metric == "goodput" for o in objectives):
        raise ConfigError(f"{where}: goodput_ttft_ms / goodput_tpot_ms are the limits of a goodput objective: "
                          "add goodput_min=")
    pair = (limits[0], limits[1])
    return [replace(o, goodput_limits=pair) if o.metric == "goodput" else o for o in objectives]


def start_phases(start: Mapping[str, Any]) -> str:
    """The phases of a start the session knows: process start -> /health -> /v1/models -> first token."""
    def ms(key: str) -> float | None:
        value = start.get(key)
        return None if value is None else float(value)

    health, ready, first = ms("health_s"), ms("startup_s"), ms("first_ttft_s")
    parts = [f"process start -> /health {health:.2f} s" if health is not None else "process start",
             f"-> /v1/models {ready:.2f} s" if ready is not None else "-> /v1/models n/a",
             f"-> first token +{first * 1000:.0f} ms" if first is not None else "-> first token n/a"]
    return " ".join(parts)


def _miss_line(cell: Judged, objective: Objective, observed: float | None) -> str:
    if observed is None and objective.metric in RUN_METRICS:
        return (f"{objective.metric}: not measured (only a server this session started has a start-up time), "
                f"limit {'<=' if objective.upper else '>='} {objective.show(objective.limit)}")
    line = f"{objective.metric}{' ' + objective.stat if objective.stat else ''}: observed {objective.show(observed)}, "
    line += f"limit {'<=' if objective.upper else '>='} {objective.show(objective.limit)}"
    dist = getattr(cell.stats, objective.metric, None) if cell.stats else None
    if isinstance(dist, Distribution):
        unit = objective.unit if objective.scale == 1.0 else "s"
        line += f"\n      distribution: {dist.describe(unit)}"
    return line


def violation_message(slo: SLO, cell: Judged, misses: Iterable[str]) -> str:
    """The failure text: which SLO, which cell, each metric observed vs limit, and the request outcome."""
    head = f"SLO {slo.name + ' ' if slo.name else ''}missed in cell {cell.label}"
    lines = [head] + [f"  - {m}" for m in misses]
    if cell.stats is not None:
        s = cell.stats
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(s.errors.items())) or "none"
        lines.append(f"  requests: {s.requests_ok} ok, {s.requests_failed} failed ({errs}); "
                     f"start spread {s.start_spread_s * 1000:.1f} ms")
    return "\n".join(lines)


def parse_slo_line(line: str, where: str) -> SLO:
    """An ini `llm_slo` line: `users=32 prompt_tokens=31,63 e2e_p95_s=20`."""
    kwargs: dict[str, Any] = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if not sep:
            raise ConfigError(f"{where}: {token!r} is not key=value")
        kwargs[key] = value.split(",") if key in ("users", "prompt_tokens") else value
    return SLO.from_kwargs(kwargs, where=where)


def load_slo_file(path: str) -> list[SLO]:
    """A TOML file of `[[slo]]` tables, each with selectors and objectives."""
    import tomllib  # noqa: PLC0415 - Python 3.11+; only needed with --llm-slo-file

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"--llm-slo-file {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--llm-slo-file {path}: not valid TOML: {exc}") from None
    tables = data.get("slo")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"--llm-slo-file {path}: expected [[slo]] tables")
    return [SLO.from_kwargs(t, where=f"{path} [[slo]] #{i + 1}") for i, t in enumerate(tables)]
