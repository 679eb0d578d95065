"""One pytest-llmload session: settings -> server -> runner -> recorded cells -> reports and gates.

`plugin.py` stays thin and hands everything here (pytest-benchmark's plugin/session split). Nothing in
this module imports pytest, so a plain script can drive a whole run the same way:

    with LoadSession(Settings(model="tiny", users=(1, 8))) as s:
        s.matrix()           # runs every cell, writes reports as it goes

Repeats and A/B: every cell is measured `settings.effective_repeats` times (`matrix()` in that many
passes; a cell measured on its own gets its other repeats from `complete_repeats()`, which the end of
the session calls). With a candidate (`--llm-candidate-*`), `self.candidate` is a second LoadSession
(its own server, runner and run, reports under <report dir>/candidate) and every measurement is made on
both servers, in the order A B, B A, A B... (alternating by repeat and by cell), one at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ConfigError, LLMLoadError, ServerStartError
from .options import Settings
from .results import CellResult, CellSpec, RunResult
from .vocabulary import SERVER_START

STARTS_KEY = "server_starts"  # RunResult.extra: one {"startup_s", "first_ttft_s"} per start of the server
PROBE = CellSpec(users=1, prompt_tokens=31, max_tokens=8)  # the first request after ready (not recorded)

if TYPE_CHECKING:
    from .load.runner import CellObserver, LoadRunner
    from .observe.physical import ModelFacts
    from .report import ReportWriter
    from .server import ServerHandle
    from .server.attach import AttachedServer
    from .server.launch import VLLMServer
    from .server.placement import Placement, PlacementReport
    from .server.presets import ModelChoice, Preset
    from .server.spec import ServerSpec


class LoadSession:
    """Owns the server, the runner and the run; records every cell and keeps reports up to date."""

    def __init__(self, settings: Settings, *, rootdir: Path | None = None) -> None:
        self.settings = settings
        self.rootdir = rootdir or Path.cwd()
        self.run = RunResult()
        self.server: ServerHandle | None = None  # VLLMServer or AttachedServer once started
        self.server_started = False  # True when we launched it (then its log is ours to show)
        self.model_choice: ModelChoice | None = None
        self.spec: ServerSpec | None = None  # what we launched (None when attached)
        self.placement: Placement | None = None  # where the client and a launched server run (None: not pinned)
        self.placement_report: PlacementReport | None = None
        self._runner: LoadRunner | None = None
        self._stack = contextlib.ExitStack()
        self._writer: ReportWriter | None = None
        self.report_errors: list[str] = []
        self._start_error: LLMLoadError | None = None
        # Where the progress line goes; None: stderr when it is a terminal. The plugin points it at the
        # terminal itself, because pytest captures stderr while tests run.
        self.progress_stream: TextIO | None = None
        # A/B: the candidate server's own session (None without --llm-candidate-*).
        self.candidate = LoadSession(settings.candidate_settings(), rootdir=rootdir) if settings.has_candidate else None
        self._placement_of: LoadSession | None = None  # the candidate runs where A's placement put things
        if self.candidate is not None:
            self.candidate._placement_of = self
        self._specs: dict[tuple[object, ...], CellSpec] = {}  # every cell measured, in first-measured order
        self._server_start: dict[str, float | None] | None = None  # this server's start, for each cell's extra

    # --- server ------------------------------------------------------------------------------------
    def start_server(self) -> ServerHandle:
        """Start vLLM (or attach to --llm-base-url) once; later calls return the same server."""
        if self._start_error is not None:
            raise self._start_error  # a server that failed to start is not started again for every test
        if self.server is None:
            try:
                self.placement = self._plan_placement()
                self.server = self._stack.enter_context(self._server_context())
            except LLMLoadError as exc:
                self._start_error = exc
                raise
            self.placement_report = self._place_client(self.server)
            self.run.environment = self._environment(self.server)
        return self.server

    @property
    def preset(self) -> Preset | None:
        """The preset of the model under test (None for a hub id or a folder without one, or attached)."""
        return None if self.model_choice is None else self.model_choice.preset

    def _server_context(self) -> contextlib.AbstractContextManager[AttachedServer | VLLMServer]:
        from .server.attach import AttachedServer
        from .server.launch import VLLMServer

        s = self.settings
        server: AttachedServer | VLLMServer
        if s.base_url:
            server = AttachedServer(s.base_url, api_key=s.api_key, model=s.served_model_name)
        else:
            self.server_started = True
            self.spec = self.server_spec()
            server = VLLMServer(self.spec)
        return server

    def _plan_placement(self) -> Placement | None:
        """Where the client (and a server we launch) will run; None leaves both where the OS puts them."""
        from .server.placement import allowed_cpus, plan_cpu_placement, plan_pinned_client
        from .server.spec import resolve_device

        s = self.settings
        if self._placement_of is not None and self._placement_of.placement is not None:
            # A/B: A has already moved our threads to the client's cores, so our own affinity no longer
            # shows the machine; the candidate's server goes where A's went (only one is under load).
            return self._placement_of.placement
        try:
            if not s.base_url and resolve_device(s.device) == "cpu":
                return plan_cpu_placement(allowed_cpus(), s.client_cpus)
            return None if s.client_cpus is None else plan_pinned_client(allowed_cpus(), s.client_cpus)
        except ValueError as exc:
            raise ConfigError(f"--llm-client-cpus: {exc}") from None

    def _place_client(self, server: ServerHandle) -> PlacementReport:
        """Move every thread of ours to the planned CPUs (restored at close), then check where both sides
        may actually run."""
        from .server.placement import Placement, allowed_cpus, check_placement, set_own_affinity

        plan = self.placement
        if plan is not None and plan.policy in ("isolated", "given"):
            original = allowed_cpus()
            set_own_affinity(plan.client_cpus)
            self._stack.callback(set_own_affinity, original)
        return check_placement(plan or Placement(allowed_cpus(), note="not pinned"), server.tree_pids())

    def server_spec(self) -> ServerSpec:
        """The ServerSpec: the model's preset layout, overridden by every layout option given."""
        from .server.presets import resolve_model
        from .server.spec import spec_from_choice

        s = self.settings
        choice = self.model_choice = resolve_model(s.model, s.cache_path())
        given = {"tensor_parallel": s.tp, "pipeline_parallel": s.pp, "quantization": s.quantization,
                 "dtype": s.dtype, "max_model_len": s.max_model_len, "served_model_name": s.served_model_name}
        return spec_from_choice(
            choice, **{k: v for k, v in given.items() if v is not None},
            gpus=s.gpus, extra_args=tuple(s.server_arg), startup_timeout_s=s.startup_timeout, host=s.host,
            device=s.device, log_dir=self.report_dir(), cache_dir=s.cache_path(),
            cpus=self.placement.server_cpus if self.placement else (),
            nice=self.placement.server_nice if self.placement else 0,
            env=self.placement.server_env() if self.placement else {},
        )

    def server_log_tail(self, lines: int = 40) -> str:
        """The last lines of the log of a server we started; empty for attached servers."""
        if self.server is None or not self.server_started:
            return ""
        return self.server.log_tail(lines)

    def _environment(self, server: ServerHandle) -> dict[str, Any]:
        from .observe.environment import collect_environment

        s, spec = self.settings, self.spec
        env = collect_environment(server=server, model=server.model, weights_dir=self._tokenizer_path())
        # Top-level layout keys: baseline comparisons refuse runs whose model or layout differ.
        env.update({
            "served_model_name": server.model,
            "tensor_parallel_size": spec.tensor_parallel if spec else s.tp,
            "pipeline_parallel_size": spec.pipeline_parallel if spec else s.pp,
            "quantization": spec.quantization if spec else s.quantization,
            "dtype": spec.dtype if spec else s.dtype,
            "gpus_option": s.gpus,
            "model_option": s.model,
            "workload": {"max_tokens": s.max_tokens, "api": s.api, "rounds": s.rounds,
                         "shared_prefix": s.shared_prefix},
        })
        if self.placement_report is not None:
            env["placement"] = self.placement_report.to_dict()
            env.setdefault("warnings", []).extend(f"placement: {p}" for p in self.placement_report.problems)
        return env

    # --- measuring ---------------------------------------------------------------------------------
    @property
    def runner(self) -> LoadRunner:
        """The LoadRunner bound to the server, with telemetry observers; created on first use."""
        if self._runner is None:
            self._runner = self._stack.enter_context(self._make_runner())
            if self.server_started and self.server is not None:
                self._server_start = self._record_start(self.server, self._runner)
        return self._runner

    def _record_start(self, server: ServerHandle, runner: LoadRunner) -> dict[str, float | None]:
        """Time to ready and the TTFT of the first request after it (a probe, not recorded as a cell),
        kept in `run.extra["server_starts"]`: run-level metrics `startup` and `first_ttft`."""
        probe = runner.run_cell(PROBE)
        first = probe.records[0] if probe.ok and probe.records else None
        start = {"startup_s": server.startup_s, "first_ttft_s": None if first is None else first.ttft}
        self.run.extra.setdefault(STARTS_KEY, []).append(start)
        return start

    def sample_start(self) -> dict[str, float | None] | None:
        """Start the launched server once more (same spec, after `close()`), measure its start and stop
        it: one more sample for a gate on `startup` / `first_ttft`. None when the server was attached."""
        from .load.runner import LoadRunner
        from .server.launch import VLLMServer

        if not self.server_started or self.spec is None:
            return None
        with self._client_placed(), VLLMServer(self.spec) as server, LoadRunner(
                server.base_url, server.model, api=self.settings.api, tokenizer_path=self._tokenizer_path(),
                request_timeout_s=self.settings.request_timeout) as runner:
            return self._record_start(server, runner)

    @contextlib.contextmanager
    def _client_placed(self) -> Iterator[None]:
        """Our threads on the client's cores for the block (as while the session measured), then back."""
        from .server.placement import allowed_cpus, set_own_affinity

        plan = self.placement
        if plan is None or plan.policy not in ("isolated", "given"):
            yield
            return
        original = allowed_cpus()
        set_own_affinity(plan.client_cpus)
        try:
            yield
        finally:
            set_own_affinity(original)

    def _make_runner(self) -> LoadRunner:
        from .load.runner import LoadRunner

        server = self.start_server()
        s = self.settings
        return LoadRunner(
            server.base_url, server.model, api_key=server.api_key or s.api_key, api=s.api,
            request_timeout_s=s.request_timeout,
            server_status=server.returncode if self.server_started else None,
            log_tail=self.server_log_tail if self.server_started else None,
            observers=self._observers(server), shared_prefix=s.shared_prefix,
            progress=None if self.progress_stream is None else True, progress_stream=self.progress_stream,
            tokenizer_path=self._tokenizer_path(), **self._load_workers(),
        )

    def _load_workers(self) -> dict[str, Any]:
        """Where the load workers run (--llm-load-workers, --llm-load-cluster, --llm-ray-address): locally,
        `auto` is one worker per core the client may use, each pinned to its own core when the client is."""
        from .load.processes import auto_workers
        from .server.placement import allowed_cpus

        s = self.settings
        given = None if s.load_workers == "auto" else int(s.load_workers)
        if s.load_cluster == "ray":
            return {"workers": given, "cluster": "ray", "ray_address": s.ray_address}
        plan = self.placement
        pinned = plan is not None and plan.policy in ("isolated", "given")
        cpus = plan.client_cpus if plan is not None and pinned else allowed_cpus()
        workers = given or auto_workers(len(cpus), pinned)
        return {"workers": workers, "worker_cpus": cpus if pinned else ()}

    def _tokenizer_path(self) -> str | None:
        model = None if self.model_choice is None else self.model_choice.model
        return model if model is not None and Path(model).is_dir() else None

    def _observers(self, server: ServerHandle) -> list[CellObserver]:
        from .observe.gpu import GpuTelemetry
        from .observe.physical import PhysicalLimitObserver
        from .observe.processes import ProcessCpuObserver
        from .observe.server_metrics import ServerMetricsObserver
        from .server.placement import allowed_cpus

        gpus = None if not self.settings.gpus else [int(g) for g in self.settings.gpus.split(",")]
        observers: list[CellObserver] = [
            GpuTelemetry(interval_s=self.settings.telemetry_interval, gpu_indices=gpus),
            ServerMetricsObserver(server.base_url, api_key=server.api_key or self.settings.api_key),
        ]
        if self.server_started:
            observers.append(ProcessCpuObserver(server.tree_pids, allowed_cpus))
        facts = self._model_facts()
        if facts is not None:
            tp = self.spec.tensor_parallel if self.spec else (self.settings.tp or 1)
            observers.append(PhysicalLimitObserver(facts, gpu_indices=gpus, tensor_parallel=tp))
        for observer in observers:
            self._stack.callback(observer.close)  # their threads and HTTP clients end with the session
        return observers

    def _model_facts(self) -> ModelFacts | None:
        from .observe.physical import model_facts_for

        if self.model_choice is None:
            return None
        try:
            return model_facts_for(self.model_choice, self.settings.quantization, self.settings.dtype)
        except Exception as exc:  # noqa: BLE001 - the physical limit is a report section, never a failure
            self.run.environment.setdefault("warnings", []).append(f"physical limit unavailable: {exc}")
            return None

    def record(self, cell: CellResult) -> CellResult:
        """Keep a cell in the run and update the partial reports, so nothing is lost if the session dies.
        The cell carries its server's start (`extra["server_start"]`) for run-level objectives."""
        if self._server_start is not None:
            cell = dataclasses.replace(cell, extra={**cell.extra, SERVER_START: self._server_start})
        self.run.cells.append(cell)
        self.write_reports(formats=("json", "csv"))
        return cell

    def run_cell(self, users: int, prompt_tokens: int, max_tokens: int | None = None,
                 rounds: int | None = None) -> CellResult:
        """Measure one closed-loop cell and record it (on the candidate too, in an A/B session)."""
        spec = CellSpec(users=users, prompt_tokens=prompt_tokens,
                        max_tokens=max_tokens or self.settings.max_tokens, rounds=rounds or self.settings.rounds)
        return self.measure(spec)

    def run_open_loop(self, rate: float, duration_s: float, prompt_tokens: int, max_tokens: int | None = None,
                      poisson: bool = True, seed: int = 0) -> CellResult:
        """Measure a fixed request rate for a duration and record it."""
        return self.measure(CellSpec(users=0, prompt_tokens=prompt_tokens, mode="open", rate=rate,
                                     max_tokens=max_tokens or self.settings.max_tokens, duration_s=duration_s,
                                     poisson=poisson, seed=seed))

    def measure(self, spec: CellSpec) -> CellResult:
        """One repeat of a cell: on this server, and in an A/B session on the candidate's as well, A first
        or B first alternating with the repeat and the cell (A B, B A, ...), so drift cancels. Returns
        this server's (A's) cell."""
        key = _spec_key(spec)
        self._specs.setdefault(key, spec)
        if self.candidate is None:
            return self.record(self.runner.run_cell(spec))
        a_first = (list(self._specs).index(key) + self.repeats_of(key)) % 2 == 0
        if not a_first:
            self.candidate.record(self._candidate_runner().run_cell(spec))
        cell = self.record(self.runner.run_cell(spec))
        if a_first:
            self.candidate.record(self._candidate_runner().run_cell(spec))
        return cell

    def _candidate_runner(self) -> LoadRunner:
        """The candidate's runner (its server started on first use), named as B when it cannot start."""
        assert self.candidate is not None
        self.candidate.progress_stream = self.progress_stream
        try:
            return self.candidate.runner
        except LLMLoadError as exc:
            raise ServerStartError(f"the candidate server (B) could not be started or reached: {exc}") from exc

    def repeats_of(self, key: tuple[object, ...]) -> int:
        """How many times the cell with this key was recorded on this server."""
        return sum(1 for c in self.run.cells if _cell_key(c) == key)

    def _results_of(self, key: tuple[object, ...]) -> int:
        """Repeats that count as results: valid cells, and failed ones (a failure is a result too)."""
        return sum(1 for c in self.run.cells if _cell_key(c) == key and (c.valid or not c.ok))

    def _wants_repeat(self, key: tuple[object, ...], done: int) -> bool:
        """Whether pass `done` (0-based) measures this cell again: until it has `effective_repeats`
        measurements, and then, while a side lacks that many results because some repeats were invalid,
        up to twice as many measurements in all."""
        n, made = self.settings.effective_repeats, self.repeats_of(key)
        if made > done:
            return False  # already measured in this pass
        sides = [self] if self.candidate is None else [self, self.candidate]
        # One repeat (no comparison) keeps an invalid cell as it is: reported invalid, not replaced.
        return made < n or (1 < n and made < 2 * n and any(side._results_of(key) < n for side in sides))

    def complete_repeats(self) -> int:
        """Measure every cell of the session until it has `settings.effective_repeats` repeats (an
        invalid repeat is measured again, at most as many times more), in passes over the cells in the
        order they were first measured, so a cell's repeats are spread out. Returns the number of
        measurements made (each on both servers in an A/B session)."""
        made = 0
        for done in range(1, 2 * self.settings.effective_repeats):
            for key, spec in list(self._specs.items()):
                if self._wants_repeat(key, done):
                    self.measure(spec)
                    made += 1
        return made

    def warm_up(self, prompt_tokens: int = 31, max_tokens: int = 8) -> CellResult:
        """One request that is not recorded: loads caches and code paths before the first measurement."""
        return self.runner.run_cell(CellSpec(users=1, prompt_tokens=prompt_tokens, max_tokens=max_tokens))

    def cached_cell(self, users: int, prompt_tokens: int, max_tokens: int | None = None) -> CellResult:
        """The cell from this run if already measured, else measure it now."""
        try:
            return self.run.cell(users, prompt_tokens, max_tokens or self.settings.max_tokens)
        except KeyError:
            return self.run_cell(users, prompt_tokens, max_tokens)

    def matrix(self, users: Sequence[int] | None = None, prompt_tokens: Sequence[int] | None = None) -> RunResult:
        """Every cell of the users x prompt-size matrix, in `settings.effective_repeats` passes (and more
        for cells with invalid repeats, see `complete_repeats`); cells already measured are not run again."""
        s = self.settings
        for done in range(2 * s.effective_repeats):
            for p in prompt_tokens or s.prompt_tokens:
                for u in users or s.users:
                    spec = CellSpec(users=u, prompt_tokens=p, max_tokens=s.max_tokens, rounds=s.rounds)
                    if self._wants_repeat(_spec_key(spec), done):
                        self.measure(spec)
        return self.run

    # --- reports -----------------------------------------------------------------------------------
    def report_dir(self) -> Path:
        path = Path(self.settings.report_dir)
        return path if path.is_absolute() else self.rootdir / path

    def write_reports(self, formats: Sequence[str] = ("json", "csv", "md", "html")) -> list[Path]:
        """Write the reports; a format that fails is noted, never raised, so the others still land."""
        from .report import ReportWriteError, ReportWriter

        if not self.run.cells and not self.run.environment:
            return []
        if self._writer is None:
            self._writer = ReportWriter(self.report_dir())
        try:
            return self._writer.write(self.run, formats=tuple(formats))
        except ReportWriteError as exc:
            self.report_errors.append(str(exc))
            return exc.written
        except (OSError, LLMLoadError) as exc:  # e.g. the report dir is not writable
            self.report_errors.append(f"{type(exc).__name__}: {exc}")
            return []

    # --- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the runner and the server (if we started it), the candidate's first (it started last, and
        what it changed is undone before what this session changed). Safe to call twice."""
        self._runner = None
        try:
            if self.candidate is not None:
                self.candidate.close()
        finally:
            self._stack.close()

    def __enter__(self) -> LoadSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_settings(settings: Settings) -> None:
    """Cross-option checks that argparse cannot do alone."""
    if settings.base_url and any(v is not None for v in (settings.tp, settings.pp, settings.quantization)):
        raise ConfigError("--llm-base-url attaches to a running server: --llm-tp, --llm-pp and "
                          "--llm-quantization only apply to servers pytest-llmload starts")
    if settings.compare_fail and not settings.baseline and not settings.has_candidate:
        raise ConfigError("--llm-compare-fail needs something to compare against: --llm-baseline PATH, or a "
                          "candidate server (--llm-candidate-model, --llm-candidate-server-arg, "
                          "--llm-candidate-base-url)")
    if settings.candidate_base_url and settings.candidate_server_arg:
        raise ConfigError("--llm-candidate-base-url attaches to a running candidate: "
                          "--llm-candidate-server-arg only applies to a candidate pytest-llmload starts")


def _spec_key(spec: CellSpec) -> tuple[object, ...]:
    """What identifies a cell across repeats (as `gate.compare` matches cells)."""
    return (spec.mode, spec.users, spec.prompt_tokens, spec.max_tokens, spec.rate)


def _cell_key(cell: CellResult) -> tuple[object, ...]:
    return (cell.mode, cell.users, cell.prompt_tokens, cell.max_tokens, cell.rate)
