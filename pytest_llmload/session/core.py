"""The session: its sides (A, and B in an A/B session), the cells it measured, and the loop that
carries out the plan (`plan.py`). It owns every server until its very end (`close()`).

    with LoadSession(Settings(model="tiny", users=(1, 8))) as s:
        s.matrix()           # runs every cell (on both sides in an A/B session), writes reports as it goes
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..errors import ConfigError, LLMLoadError, ServerStartError
from ..options import Settings
from ..results import CellKey, CellResult, CellSpec, RunResult
from . import plan
from .side import STARTS_KEY, Side

if TYPE_CHECKING:
    from ..server import ServerHandle
    from ..server.presets import Preset


class LoadSession:
    """Holds the sides and the cells measured; measures repeats in the plan's order; closes at the end."""

    def __init__(self, settings: Settings, *, rootdir: Path | None = None) -> None:
        self.settings = settings
        self.rootdir = rootdir or Path.cwd()
        self.a = Side("A", settings, rootdir=rootdir)
        self.b = Side("B", settings.candidate_settings(), rootdir=rootdir) if settings.has_candidate else None
        self._specs: dict[CellKey, CellSpec] = {}  # every cell measured, in first-measured order
        self._blocks = 0  # blocks measured so far when the sides take turns (the tests' own count as A's first)
        self.ab_mode, self.ab_why = self._ab_mode()
        if self.b is not None:
            self.a.run.extra["ab_mode"] = {"mode": self.ab_mode, "why": self.ab_why}

    @property
    def sides(self) -> list[Side]:
        return [self.a] if self.b is None else [self.a, self.b]

    @property
    def run(self) -> RunResult:
        """A's run: the session's own deployment (B's is `self.b.run`)."""
        return self.a.run

    @run.setter
    def run(self, run: RunResult) -> None:
        self.a.run = run

    @property
    def preset(self) -> Preset | None:
        """The preset behind A's server (None for a hub id, a folder without one, or an attached server)."""
        return self.a.preset

    @property
    def progress_stream(self) -> TextIO | None:
        return self.a.progress_stream

    @progress_stream.setter
    def progress_stream(self, stream: TextIO | None) -> None:
        for side in self.sides:
            side.progress_stream = stream

    # --- servers -----------------------------------------------------------------------------------
    def start_server(self) -> ServerHandle:
        """Start A's server (or attach) once; later calls return the same server."""
        return self.a.start()

    @contextlib.contextmanager
    def serving(self) -> Iterator[ServerHandle]:
        """A's server for a fixture to hand out. Leaving the block stops nothing: the session stops its
        servers at its very end, after the last repeat and the reports."""
        yield self.start_server()

    def server_log_tail(self, lines: int = 40) -> str:
        """The log tail of every launched server, named by side in an A/B session."""
        if self.b is None:
            return self.a.server_log_tail(lines)
        return "\n".join(f"--- side {s.name} ---\n{t}" for s in self.sides if (t := s.server_log_tail(lines)))

    def _ab_mode(self) -> tuple[str, str]:
        """`alternate` or `together` (and why) for an A/B session; `single` without a candidate. Each side
        is judged by its own settings: B's GPUs are --llm-candidate-gpus (else --llm-gpus)."""
        if self.b is None:
            return "single", "one side"
        from ..server.spec import resolve_device

        def compute(settings: Settings) -> frozenset[str] | None:
            if settings.base_url:
                return None
            if resolve_device(settings.device) == "cpu":
                return frozenset({"cpu"})  # B's server goes on the cores A's placement gave the server
            return None if not settings.gpus else frozenset(settings.gpus.split(","))

        return plan.choose_ab_mode(self.settings.ab_mode, [s.launched for s in self.sides],
                                   [compute(s.settings) for s in self.sides])

    def _up(self, side: Side) -> Side:
        """The side with its server started. B's server goes where A's placement puts a server (planned
        by A on the whole machine: once our threads moved to the client's cores, B would see only those).
        When the sides take turns, the other side's server is stopped first."""
        if self.ab_mode == "alternate":
            for other in self.sides:
                if other is not side and other.state == "up":
                    other.stop()
        if side is not self.b:
            side.start()
            return side
        try:
            side.start(placement_from=self.a)
        except LLMLoadError as exc:
            raise ServerStartError(f"the candidate server (B) could not be started or reached: {exc}") from exc
        return side

    # --- measuring ---------------------------------------------------------------------------------
    def measure(self, spec: CellSpec) -> CellResult:
        """One repeat of a cell on every side, in the plan's side order; returns A's cell. When the sides
        take turns, only A measures now (a test waits for A's cell); B's cells come in blocks at the end."""
        key = spec.key
        self._specs.setdefault(key, spec)
        if self.ab_mode == "alternate":
            return self._up(self.a).measure(spec)
        order = plan.side_order(list(self._specs).index(key), len(self.a.run.repeats_of(key)),
                                [s.name for s in self.sides])
        cells = {name: self._up(self._side(name)).measure(spec) for name in order}
        return cells["A"]

    def _side(self, name: str) -> Side:
        return next(s for s in self.sides if s.name == name)

    def run_cell(self, users: int, prompt_tokens: int, max_tokens: int | None = None,
                 rounds: int | None = None) -> CellResult:
        """Measure one closed-loop cell and record it (on both sides in an A/B session)."""
        return self.measure(self.closed_spec(users, prompt_tokens, max_tokens, rounds))

    def closed_spec(self, users: int, prompt_tokens: int, max_tokens: int | None = None,
                    rounds: int | None = None) -> CellSpec:
        """A closed-loop cell with the session's defaults for what is not given."""
        return CellSpec(users=users, prompt_tokens=prompt_tokens, max_tokens=max_tokens or self.settings.max_tokens,
                        rounds=rounds or self.settings.rounds)

    def run_open_loop(self, rate: float, duration_s: float, prompt_tokens: int, max_tokens: int | None = None,
                      poisson: bool = True, seed: int = 0) -> CellResult:
        """Measure a fixed request rate for a duration and record it."""
        return self.measure(CellSpec(users=0, prompt_tokens=prompt_tokens, mode="open", rate=rate,
                                     max_tokens=max_tokens or self.settings.max_tokens, duration_s=duration_s,
                                     poisson=poisson, seed=seed))

    def cached_cell(self, users: int, prompt_tokens: int, max_tokens: int | None = None,
                    rounds: int | None = None) -> CellResult:
        """The cell from this run if already measured (its last repeat), else measure it now."""
        spec = self.closed_spec(users, prompt_tokens, max_tokens, rounds)
        done = self.a.run.repeats_of(spec.key)
        return done[-1] if done else self.measure(spec)

    def cached_spec(self, spec: CellSpec) -> CellResult:
        """The cell of `spec` from this run if already measured (its last repeat), else measure it now."""
        done = self.a.run.repeats_of(spec.key)
        return done[-1] if done else self.measure(spec)

    def warm_up(self, prompt_tokens: int = 31, max_tokens: int = 8) -> CellResult:
        """One request on A that is not recorded: loads caches and code paths before a measurement."""
        return self._up(self.a).warm_up(CellSpec(users=1, prompt_tokens=prompt_tokens, max_tokens=max_tokens))

    def _counts(self, key: CellKey) -> list[plan.Counts]:
        return [self._counts_on(s, key) for s in self.sides]

    def _measure_pass(self, keys: Sequence[CellKey], done: int) -> int:
        todo = plan.next_pass(keys, {k: self._counts(k) for k in keys}, done, self.settings.effective_repeats)
        for key in todo:
            self.measure(self._specs[key])
        return len(todo)

    def complete_repeats(self) -> int:
        """Measure every cell of the session until it has its repeats (see `plan`), in passes over the
        cells in the order they were first measured (in blocks per side when the sides take turns).
        Returns the number of measurements made (each on every side, unless the sides take turns)."""
        if self.ab_mode == "alternate":
            return self._measure_blocks(list(self._specs))
        return sum(self._measure_pass(list(self._specs), done)
                   for done in range(1, plan.max_passes(self.settings.effective_repeats)))

    def _measure_blocks(self, keys: Sequence[CellKey]) -> int:
        """Sides taking turns: blocks A B B A ..., each one pass of a side over the cells it lacks, on its
        server alone (the other one stopped). The tests' own measurements on A count as the first block."""
        n, made = self.settings.effective_repeats, 0
        if self._blocks == 0 and self.a.run.cells:
            self._blocks = 1
        for _ in range(plan.max_blocks(n)):
            wanting = {s.name: [k for k in keys if plan.side_wants(self._counts_on(s, k), n)] for s in self.sides}
            if not any(wanting.values()):
                break
            side = self._side(plan.block_side(self._blocks))
            self._blocks += 1
            for key in wanting[side.name]:
                self._up(side).measure(self._specs[key])
                made += 1
        return made

    def measure_more(self, keys: Sequence[CellKey]) -> int:
        """One more repeat a side of each cell (`--llm-repeats auto`'s next look): when the sides take
        turns, one block a side, the side whose server is up first (A B, then B A: the order alternates
        and each look costs one restart); else each cell on every side, the order of sides alternating
        as in the passes. Returns the measurements made."""
        if self.ab_mode != "alternate":
            for key in keys:
                self.measure(self._specs[key])
            return len(keys)
        made = 0
        for side in sorted(self.sides, key=lambda s: s.state != "up"):
            self._blocks += 1
            for key in keys:
                self._up(side).measure(self._specs[key])
                made += 1
        return made

    @staticmethod
    def _counts_on(side: Side, key: CellKey) -> plan.Counts:
        cells = side.run.repeats_of(key)
        return plan.Counts(made=len(cells), results=sum(1 for c in cells if c.valid or not c.ok))

    def matrix(self, users: Sequence[int] | None = None, prompt_tokens: Sequence[int] | None = None) -> RunResult:
        """Every cell of the users x prompt-size matrix, with all its repeats (in passes); cells already
        measured are not run again."""
        s = self.settings
        specs = [self.closed_spec(u, p) for p in prompt_tokens or s.prompt_tokens for u in users or s.users]
        for spec in specs:
            self._specs.setdefault(spec.key, spec)
        if self.ab_mode == "alternate":
            self._measure_blocks([spec.key for spec in specs])
            return self.run
        for done in range(plan.max_passes(s.effective_repeats)):
            self._measure_pass([spec.key for spec in specs], done)
        return self.run

    def measure_on_another_start(self) -> int:
        """A's server stopped and started again (fresh placement, caches, compilation), and every cell
        of the session measured again with all its repeats on that start (`--llm-baseline-starts`)."""
        self.a.stop()
        made = 0
        for _ in range(self.settings.effective_repeats):
            for spec in list(self._specs.values()):
                self._up(self.a).measure(spec)
                made += 1
        return made

    def starts(self) -> list[tuple[str, dict[str, float | None]]]:
        """Every start of a launched server the session recorded, named ("start 1 of A"); sides not yet
        up are started (and their start recorded) first. Empty when every side is attached."""
        out: list[tuple[str, dict[str, float | None]]] = []
        for side in self.sides:
            if not side.launched:
                continue
            if not side.run.extra.get(STARTS_KEY):
                self._up(side).runner  # noqa: B018 - creating the runner records the start
            named = side.name if self.b is not None else "the server"
            out += [(f"start {i} of {named}", start) for i, start in enumerate(side.run.extra[STARTS_KEY], 1)]
        return out

    def sample_starts(self, starts: int) -> None:
        """Each launched side started again until it has `starts` starts (sides alternating), after
        stopping every server, so that each start finds the machine as the first one did."""
        for side in self.sides:
            side.stop()
        launched = [s.name for s in self.sides if s.launched]
        for name in plan.start_samples(starts, launched):
            side = self._side(name)
            side.sample_start()

    # --- reports and the end -----------------------------------------------------------------------
    def report_dir(self) -> Path:
        return self.a.report_dir()

    def write_reports(self, formats: tuple[str, ...] = ("json", "csv", "md", "html")) -> list[Path]:
        """Every side's reports (B's under <report dir>/candidate)."""
        paths = self.a.write_reports(formats)
        if self.b is not None and self.b.run.cells:
            self.b.run.interrupted = self.a.run.interrupted
            paths += self.b.write_reports(formats)
        return paths

    @property
    def report_errors(self) -> list[str]:
        return [e for s in self.sides for e in s.report_errors]

    def close(self) -> None:
        """The session's very end: every side closed (B first: it started last, and what it changed is
        undone before what A changed). Safe to call twice."""
        try:
            if self.b is not None:
                self.b.close()
        finally:
            self.a.close()

    def __enter__(self) -> LoadSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What defines a candidate server B (Settings.has_candidate), for messages.
CANDIDATE_OPTIONS = ("--llm-candidate-model, --llm-candidate-server-arg, --llm-candidate-vllm, "
                     "--llm-candidate-server-env, --llm-candidate-gpus, --llm-candidate-base-url")


def check_settings(settings: Settings) -> None:
    """Cross-option checks that argparse cannot do alone."""
    if settings.base_url and any(v is not None for v in (settings.tp, settings.pp, settings.quantization)):
        raise ConfigError("--llm-base-url attaches to a running server: --llm-tp, --llm-pp and "
                          "--llm-quantization only apply to servers pytest-llmload starts")
    if settings.compare_fail and not settings.baseline and not settings.has_candidate:
        raise ConfigError("--llm-compare-fail needs something to compare against: --llm-baseline PATH, or a "
                          f"candidate server ({CANDIDATE_OPTIONS})")
    if settings.base_url:
        given = _given(("--llm-vllm", settings.vllm), ("--llm-server-env", settings.server_env))
        if given:
            raise ConfigError(f"--llm-base-url attaches to a running server: {given} to a server "
                              "pytest-llmload starts")
    if settings.candidate_base_url:
        given = _given(("--llm-candidate-server-arg", settings.candidate_server_arg),
                       ("--llm-candidate-vllm", settings.candidate_vllm),
                       ("--llm-candidate-server-env", settings.candidate_server_env),
                       ("--llm-candidate-gpus", settings.candidate_gpus))
        if given:
            raise ConfigError(f"--llm-candidate-base-url attaches to a running candidate: {given} to a "
                              "candidate pytest-llmload starts")
    if settings.auto_repeats and not settings.compare_fail:
        raise ConfigError("--llm-repeats auto repeats until the gates conclude: it needs --llm-compare-fail (and "
                          "a baseline or a candidate to compare with); give a number of repeats otherwise")


def _given(*options: tuple[str, object]) -> str:
    """`--a only applies` / `--a and --b only apply` for the options given a value; empty when none."""
    flags = [flag for flag, value in options if value]
    if not flags:
        return ""
    names = flags[0] if len(flags) == 1 else f"{', '.join(flags[:-1])} and {flags[-1]}"
    return f"{names} only {'applies' if len(flags) == 1 else 'apply'}"
