"""The data every other module passes around: per-request records, per-cell results, whole runs.

Frozen, slotted dataclasses; `to_dict` / `from_dict` give the JSON shape of `llmload.json`
(see `report/json_report.py`, which adds `schema_version` and validates on read).
All times are seconds as floats. Request times are relative to the cell's start (`t0`, taken from
`time.perf_counter()`), so records from different cells can be compared and stored without
exposing the host's monotonic clock origin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .objectives import SLO
from .vocabulary import DISTRIBUTIONS, METRICS, Distribution, check_stat, metric_named, value_of

# Error kinds a request can fail with. Kept as plain strings so they read well in reports.
ERROR_KINDS = (
    "http_400",  # the server refused the request (e.g. prompt longer than the context)
    "http_404",
    "http_429",  # rate limited / queue full
    "http_5xx",
    "http_other",
    "connect",  # could not connect or the connection was reset
    "timeout",  # no complete answer within the per-request timeout
    "malformed_sse",  # a data line that is not JSON, or JSON of the wrong shape
    "incomplete_stream",  # the stream ended without `data: [DONE]`
    "server_error_event",  # an in-band `{"error": ...}` event in the stream
    "server_died",  # the server process exited during the request
    "no_usage",  # finished but the server sent no `usage`, so tokens cannot be counted
)

# Who is at fault when a measurement failed (`CellResult.cause`).
CAUSES = (
    "server",  # the server answered with errors, died, or could not run the cell: the study's "-"
    "client",  # the tool could not measure (a load worker crashed; an invalid cell)
    "setup",  # the tool was configured so that it cannot measure (errors.SetupError names the fix)
)


@dataclass(frozen=True, slots=True)
class CellSpec:
    """What to run: N users at once (closed loop) or a fixed request rate for a duration (open loop)."""

    users: int
    prompt_tokens: int
    max_tokens: int = 100
    rounds: int = 1  # closed loop: each user sends `rounds` requests one after another
    mode: str = "closed"  # "closed" or "open"
    rate: float | None = None  # open loop: requests per second
    duration_s: float | None = None  # open loop: how long to keep sending
    poisson: bool = True  # open loop: exponential inter-arrival times (else constant)
    seed: int = 0
    turns: int = 1  # > 1: each user holds a conversation of this many turns (chat API; load/conversation.py)
    think_time_s: float = 0.0  # conversations: pause between a reply and the user's next turn
    cache: str = ""  # prefix-cache state asked for: "cold", "warm", "uncontrolled", or "" (not controlled)
    workload: Any = None  # a `load.trace.Workload` to replay instead of prompts of one size
    speed: float = 1.0  # open-loop replay: the trace's arrival times divided by this
    goodput_ttft_s: float | None = None  # per-request limits a "good" request meets (goodput)
    goodput_tpot_s: float | None = None

    @property
    def key(self) -> CellKey:
        """What makes two measurements repeats of one cell: the one key for plans, matrices and gates."""
        return CellKey(self.mode, self.users, self.prompt_tokens, self.max_tokens, self.rounds, self.rate,
                       self.turns, self.think_time_s, self.cache, workload_name(self.workload), self.speed)

    @property
    def label(self) -> str:
        """How reports and failure messages name the cell."""
        return self.key.label


@dataclass(frozen=True, slots=True, order=True)
class CellKey:
    """The identity of a cell across repeats, sessions and sides (a baseline's cells match by it)."""

    mode: str
    users: int
    prompt_tokens: int
    max_tokens: int
    rounds: int = 1
    rate: float | None = None
    # Workloads (defaults leave the keys of plain cells, and of files written before them, as they were).
    turns: int = 1
    think_time_s: float = 0.0
    cache: str = ""
    workload: str = ""  # a replayed trace's name
    speed: float = 1.0

    @property
    def label(self) -> str:
        """`users=8 prompt_tokens=63 max_tokens=100` (and `rounds=3`, `turns=4`, `cache=cold`,
        `workload=NAME` when they are not the defaults)."""
        if self.workload:
            head = (f"workload={self.workload} speed={self.speed:g}x" if self.mode == "open"
                    else f"workload={self.workload} users={self.users}")
            return head + (f" cache={self.cache}" if self.cache else "")
        head = f"rate={self.rate:g}/s" if self.mode == "open" and self.rate is not None else f"users={self.users}"
        extras = [f"rounds={self.rounds}" if self.rounds != 1 else "",
                  f"turns={self.turns}" if self.turns != 1 else "",
                  f"think_time_s={self.think_time_s:g}" if self.think_time_s else "",
                  f"cache={self.cache}" if self.cache else ""]
        tail = "".join(f" {e}" for e in extras if e)
        return f"{head} prompt_tokens={self.prompt_tokens} max_tokens={self.max_tokens}{tail}"


def workload_name(workload: Any) -> str:
    """The name a replayed trace goes by in keys and labels ("" when the cell replays none)."""
    return "" if workload is None else str(getattr(workload, "name", workload))


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the client saw it. Times in seconds since the cell's start."""

    index: int
    start: float
    end: float
    first_token: float | None = None  # arrival of the first chunk with content (not the role-only chunk)
    chunk_times: tuple[float, ...] = ()  # arrival of every chunk that carried content
    prompt_tokens: int | None = None  # from the server's `usage`
    output_tokens: int | None = None  # from the server's `usage`
    expected_prompt_tokens: int | None = None  # what the workload sized the prompt to
    error: str | None = None  # one of ERROR_KINDS, None for success
    error_detail: str | None = None
    conversation: int | None = None  # conversations and traces: the conversation the request belongs to
    turn: int | None = None  # ... and its turn in it (0 first)
    # A stream that carried reasoning (`reasoning_content` / `reasoning` deltas): when its first answer
    # (content) chunk arrived, and its reasoning tokens (the server's usage when it reports them, else
    # the reasoning chunks: a lower bound). Both None for a stream without reasoning.
    first_content: float | None = None
    reasoning_tokens: int | None = None
    cached_tokens: int | None = None  # usage.prompt_tokens_details.cached_tokens, when the server reports it

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttfc(self) -> float | None:
        """Time to the first content (answer) token: the TTFT of a stream without reasoning; None for a
        reasoning stream that never reached its answer."""
        if self.reasoning_tokens is None:
            return self.ttft
        return None if self.first_content is None else self.first_content - self.start

    @property
    def e2e(self) -> float:
        return self.end - self.start

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["chunk_times"] = list(self.chunk_times)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        d = dict(d)
        d["chunk_times"] = tuple(d.get("chunk_times") or ())
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True, slots=True)
class CellStats:
    """The metrics of one cell, computed from its records by `metrics.cell_stats`."""

    e2e: Distribution | None
    ttft: Distribution | None
    itl: Distribution | None
    tpot: Distribution | None
    tokens_per_s_per_user: Distribution | None
    total_tokens_per_s: float
    requests_per_s: float
    requests_ok: int
    requests_failed: int
    errors: dict[str, int]
    start_spread_s: float
    duration_s: float
    prompt_tokens_mismatches: int = 0  # requests whose usage.prompt_tokens differed from the size asked
    prefix_cache_hit_rate: float | None = None  # the server's prefix-cache hits / queries during the cell
    goodput: float | None = None  # share of the cell's requests that met its per-request limits
    ttfc: Distribution | None = None  # time to first content token (reasoning excluded)
    reasoning_tokens: Distribution | None = None  # per request, over streams that carried reasoning

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for name in DISTRIBUTIONS:
            dist = getattr(self, name)
            d[METRICS[name].key] = None if dist is None else dist.to_dict()
        for name in ("total_tokens_per_s", "requests_per_s", "requests_ok", "requests_failed",
                     "errors", "start_spread_s", "duration_s", "prompt_tokens_mismatches",
                     "prefix_cache_hit_rate", "goodput"):
            d[name] = getattr(self, name)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellStats:
        kw: dict[str, Any] = {}
        for name in DISTRIBUTIONS:
            raw = d.get(METRICS[name].key)
            kw[name] = None if raw is None else Distribution.from_dict(raw)
        for f in fields(cls):
            if f.name not in kw and f.name in d:
                kw[f.name] = d[f.name]
        return cls(**kw)


@dataclass(frozen=True, repr=False)
class CellResult:
    """One cell: N users x a prompt of P tokens, each generating `max_tokens`.

    `ok` is False when the cell could not run or no request succeeded (the study's "-"); `error` says why.
    `valid` is False when the cell ran but the tool cannot vouch for its numbers (the client was starved,
    its requests did not start together, client and server disagree); `invalid_reasons` says why. An
    invalid cell's numbers are kept for diagnosis, never used as a measurement.
    `t0_monotonic_ns` / `t0_unix_ns` anchor the cell's time zero (record times are relative to it) on
    CLOCK_MONOTONIC and on the wall clock, read at the same instant, to line records up with server logs.
    `cause` says who is at fault when the cell failed or is invalid: "server", "client" or "setup" (CAUSES).
    `extra` carries optional per-cell sections (GPU telemetry, server /metrics deltas, physical limit,
    warnings) keyed by name, so the core does not depend on the modules that fill them.
    """

    users: int
    prompt_tokens: int
    max_tokens: int
    ok: bool
    error: str | None = None
    stats: CellStats | None = None
    records: tuple[RequestRecord, ...] = ()
    mode: str = "closed"  # "closed" (N users at once) or "open" (fixed request rate)
    rate: float | None = None  # requests/s for open-loop cells
    extra: dict[str, Any] = field(default_factory=dict)
    valid: bool = True
    invalid_reasons: tuple[str, ...] = ()
    t0_monotonic_ns: int | None = None
    t0_unix_ns: int | None = None
    rounds: int = 1  # closed loop: requests each user sent one after another
    turns: int = 1  # conversations: turns per user
    think_time_s: float = 0.0
    cache: str = ""  # the prefix-cache state asked for ("" not controlled); what it was: extra["prefix_cache"]
    workload: str = ""  # the replayed trace's name
    speed: float = 1.0
    cause: str | None = None  # one of CAUSES when the cell failed or is invalid, else None

    def __repr__(self) -> str:
        # Short, so that a failed plain `assert result.e2e.p95 < 20` names the cell instead of dumping records.
        state = "ok" if self.ok else f"failed: {self.error}"
        return f"<CellResult {self.label} ({len(self.records)} requests, {state})>"

    # Convenient attribute access for tests: result.e2e.p95, result.ttft.p50, ...
    @property
    def e2e(self) -> Distribution | None:
        return self.stats.e2e if self.stats else None

    @property
    def ttft(self) -> Distribution | None:
        return self.stats.ttft if self.stats else None

    @property
    def itl(self) -> Distribution | None:
        return self.stats.itl if self.stats else None

    @property
    def tpot(self) -> Distribution | None:
        return self.stats.tpot if self.stats else None

    @property
    def tokens_per_s_per_user(self) -> Distribution | None:
        return self.stats.tokens_per_s_per_user if self.stats else None

    @property
    def total_tokens_per_s(self) -> float | None:
        return self.stats.total_tokens_per_s if self.stats else None

    @property
    def errors(self) -> dict[str, int]:
        return dict(self.stats.errors) if self.stats else {}

    def value(self, metric: str, stat: str | None = "mean") -> float | None:
        """One statistic of a metric in SI units (`value("e2e", "p95")`); None when the cell failed or the
        metric is undefined. ConfigError for a name or statistic the vocabulary does not have."""
        if not self.ok or self.stats is None:
            check_stat(metric_named(metric), stat)
            return None
        return value_of(self.stats, metric, stat)

    @property
    def key(self) -> CellKey:
        """The cell's identity: measurements with equal keys are repeats of one cell."""
        return CellKey(self.mode, self.users, self.prompt_tokens, self.max_tokens, self.rounds, self.rate,
                       self.turns, self.think_time_s, self.cache, self.workload, self.speed)

    @property
    def label(self) -> str:
        """How reports and failure messages name the cell."""
        return self.key.label

    @property
    def ttfc(self) -> Distribution | None:
        return self.stats.ttfc if self.stats else None

    @property
    def prefix_cache_hit_rate(self) -> float | None:
        return self.stats.prefix_cache_hit_rate if self.stats else None

    @property
    def goodput(self) -> float | None:
        return self.stats.goodput if self.stats else None

    def turn_records(self, turn: int) -> tuple[RequestRecord, ...]:
        """The records of one turn of a conversation cell (0 first)."""
        return tuple(r for r in self.records if r.turn == turn)

    def assert_slo(self, **limits: float) -> None:
        """Raise `SLOViolation` naming cell, metric, observed value and limit for every missed objective."""
        SLO.from_kwargs(limits, where="assert_slo()").check(self)

    def to_dict(self, *, include_records: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "users": self.users,
            "prompt_tokens": self.prompt_tokens,
            "max_tokens": self.max_tokens,
            "mode": self.mode,
            "rate": self.rate,
            "rounds": self.rounds,
            **{k: getattr(self, k) for k, default in _WORKLOAD_DEFAULTS.items() if getattr(self, k) != default},
            "ok": self.ok,
            "error": self.error,
            "valid": self.valid,
            "invalid_reasons": list(self.invalid_reasons),
            "cause": self.cause,
            "t0_monotonic_ns": self.t0_monotonic_ns,
            "t0_unix_ns": self.t0_unix_ns,
            "stats": None if self.stats is None else self.stats.to_dict(),
            "extra": self.extra,
        }
        if include_records:
            d["records"] = [r.to_dict() for r in self.records]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CellResult:
        return cls(
            users=d["users"],
            prompt_tokens=d["prompt_tokens"],
            max_tokens=d["max_tokens"],
            ok=d["ok"],
            error=d.get("error"),
            stats=None if d.get("stats") is None else CellStats.from_dict(d["stats"]),
            records=tuple(RequestRecord.from_dict(r) for r in d.get("records") or ()),
            mode=d.get("mode", "closed"),
            rate=d.get("rate"),
            extra=dict(d.get("extra") or {}),
            valid=bool(d.get("valid", True)),
            invalid_reasons=tuple(d.get("invalid_reasons") or ()),
            t0_monotonic_ns=d.get("t0_monotonic_ns"),
            t0_unix_ns=d.get("t0_unix_ns"),
            rounds=int(d.get("rounds") or 1),
            **{k: d.get(k, default) for k, default in _WORKLOAD_DEFAULTS.items()},
            cause=d.get("cause", _legacy_cause(d)),
        )


# Cell fields a workload sets; written only when not the default, so plain cells keep their JSON shape.
_WORKLOAD_DEFAULTS: dict[str, Any] = {"turns": 1, "think_time_s": 0.0, "cache": "", "workload": "", "speed": 1.0}


def _legacy_cause(d: dict[str, Any]) -> str | None:
    """The cause of a cell stored before causes were recorded: a failure was the server's (the study's "-"),
    an invalid cell the client's."""
    if not d["ok"]:
        return "server"
    return None if d.get("valid", True) else "client"


@dataclass
class RunResult:
    """A whole run: the environment it ran in and its cells, in the order they ran.

    Mutable on purpose: the plugin appends cells as they finish so that partial results can be
    written at any moment (a failed or interrupted session still leaves its reports). A cell measured
    several times (`--llm-repeats`) appears once per repeat, in the order measured.
    `extra` carries run-level sections keyed by name (the server starts, the comparisons), like a
    cell's `extra`.
    """

    environment: dict[str, Any] = field(default_factory=dict)
    cells: list[CellResult] = field(default_factory=list)
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def cell(self, users: int, prompt_tokens: int, max_tokens: int | None = None) -> CellResult:
        """The last cell measured with these parameters; KeyError if there is none."""
        for c in reversed(self.cells):
            if c.mode == "closed" and c.users == users and c.prompt_tokens == prompt_tokens and (
                max_tokens is None or c.max_tokens == max_tokens
            ):
                return c
        raise KeyError(f"no cell users={users} prompt_tokens={prompt_tokens} in this run")

    def repeats(self, users: int, prompt_tokens: int) -> list[CellResult]:
        """Every measurement of the closed-loop cell, in the order measured, with the last one's key (its
        max_tokens and rounds; what `cell` returns is the last of them); empty if there is none."""
        same = [c for c in self.cells if c.mode == "closed" and c.users == users and c.prompt_tokens == prompt_tokens]
        return [c for c in same if c.key == same[-1].key] if same else []

    def repeats_of(self, key: CellKey) -> list[CellResult]:
        """Every measurement of the cell with this key, in the order measured."""
        return [c for c in self.cells if c.key == key]

    def matrix_axes(self) -> tuple[list[int], list[int]]:
        """Sorted distinct users and prompt sizes of the closed-loop cells."""
        closed = [c for c in self.cells if c.mode == "closed"]
        return sorted({c.users for c in closed}), sorted({c.prompt_tokens for c in closed})
