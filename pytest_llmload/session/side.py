"""One side of a session: one deployment under test (A, and in an A/B session B).

A Side owns how its server starts (launched from the settings, or attached with a base URL), where the
client and the server run (placement), the runner with its observers, and the run it records. Two
Sides are of equal standing: neither holds the other; the session (`core.LoadSession`) holds both and
says which measures next (`plan.py`).

Lifecycle, the whole of it:

    not started --start()--> up --stop()--> stopped --start()--> up ...   (a restart: a start sample)
                               \\--close()--> closed                       (the end of the session)

Only the session stops or closes a side; fixtures never do. Measuring on a side the session stopped or
closed raises `ServerStoppedError` (a fault of the session): it is never recorded as a failed cell of the
server under test. A server that dies on its own while up is the server under test failing: its cells
fail fast with "server died" and the log tail, and the session goes on. A fault of the tool's own set-up
(`SetupError`: load workers that cannot start or reach the server, no way to size prompts) is found
before the first request (`LoadRunner.start`); the cell asked for is recorded as failed with cause
"setup" (the matrices' "error", never the server's "-") and the SetupError, naming the fix, is raised,
again for every later measurement on the side (the set-up is not retried per test).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..errors import ConfigError, LLMLoadError, ServerStoppedError, SetupError
from ..options import Settings
from ..results import CellKey, CellResult, CellSpec, RunResult
from ..vocabulary import SERVER_START

STARTS_KEY = "server_starts"  # RunResult.extra: one {"startup_s", "first_ttft_s"} per start of the server
COLD_KEY = "cold_cells"  # RunResult.extra: the unrecorded warm-up run of each cell after each start
START_INDEX = "start_index"  # a cell's extra: which start of its server it was measured on (0-based)
PROBE = CellSpec(users=1, prompt_tokens=31, max_tokens=8)  # the first request after ready (not recorded)

if TYPE_CHECKING:
    from ..load.runner import CellObserver, LoadRunner
    from ..observe.physical import ModelFacts
    from ..report import ReportWriter
    from ..server import ServerHandle
    from ..server.attach import AttachedServer
    from ..server.launch import VLLMServer
    from ..server.placement import Placement, PlacementReport
    from ..server.presets import ModelChoice, Preset
    from ..server.spec import ServerSpec


class Side:
    """One deployment under test: its server, placement, runner, observers and recorded run."""

    def __init__(self, name: str, settings: Settings, *, rootdir: Path | None = None) -> None:
        self.name = name  # "A" or "B": how messages and reports name the side
        self.settings = settings
        self.rootdir = rootdir or Path.cwd()
        self.run = RunResult()
        self.state = "not started"  # "up", "stopped" (may start again), "closed" (never again)
        self.server: ServerHandle | None = None  # VLLMServer or AttachedServer while up
        self.model_choice: ModelChoice | None = None
        self.spec: ServerSpec | None = None  # what we launched (None when attached)
        self.placement: Placement | None = None  # where the client and a launched server run (None: not pinned)
        self.placement_report: PlacementReport | None = None
        self.report_errors: list[str] = []
        # Where the progress line goes; None: none. The plugin points it at the terminal itself, because
        # pytest captures stderr while tests run.
        self.progress_stream: TextIO | None = None
        self._runner: LoadRunner | None = None
        self._stack = contextlib.ExitStack()
        self._writer: ReportWriter | None = None
        self._start_error: LLMLoadError | None = None
        self._setup_error: SetupError | None = None  # the tool's set-up cannot measure on this side
        self._server_start: dict[str, float | None] | None = None  # this start, for each cell's extra
        self._last_log_tail = ""  # a launched server's log, kept when it is stopped (failures quote it)
        self._planned = False  # whether `placement` was planned (None is a plan too: not pinned)
        self.starts = 0  # how many times this side's server was started (or attached)
        self._warmed: set[CellKey] = set()  # cells run once unrecorded since the last start

    @property
    def launched(self) -> bool:
        """Whether this side's server is started by the session (else attached: never stopped by us)."""
        return not self.settings.base_url

    @property
    def preset(self) -> Preset | None:
        """The preset of the model under test (None for a hub id or a folder without one, or attached)."""
        return None if self.model_choice is None else self.model_choice.preset

    # --- lifecycle ---------------------------------------------------------------------------------
    def planned_placement(self) -> Placement | None:
        """Where the client and a launched server run, planned once on the whole machine (before any
        side moved our threads); None leaves both where the OS puts them."""
        if not self._planned:
            self.placement, self._planned = self._plan_placement(), True
        return self.placement

    def start(self, placement_from: Side | None = None) -> ServerHandle:
        """Start vLLM (or attach) if it is not up, placed by this side's plan, or by `placement_from`'s
        (B's server goes where A's plan puts a server: only one of them is under load at a time)."""
        if self.state == "closed":
            raise ServerStoppedError(f"side {self.name}: the session has closed its server; nothing more can be "
                                     "measured on it")
        if self._start_error is not None:
            raise self._start_error  # a server that failed to start is not started again for every test
        if self.server is None:
            try:
                self.placement = (placement_from or self).planned_placement()
                self.server = self._stack.enter_context(self._server_context())
            except LLMLoadError as exc:
                self._start_error = exc
                self._stack.close()
                raise
            self.state = "up"
            self.starts += 1
            self._warmed = set()
            self.placement_report = self._place_client(self.server)
            if not self.run.environment:
                self.run.environment = self._environment(self.server)
        return self.server

    def stop(self) -> None:
        """Stop the runner, the observers and a launched server (the session may start it again)."""
        if self.server is not None and self.launched:
            self._last_log_tail = self.server.log_tail(40)
        self._runner, self.server, self._server_start = None, None, None
        try:
            self._stack.close()
        finally:
            self._stack = contextlib.ExitStack()
            if self.state == "up":
                self.state = "stopped"

    def close(self) -> None:
        """The end of the session for this side: stopped, and never started again. Safe to call twice."""
        try:
            self.stop()
        finally:
            self.state = "closed"

    def server_log_tail(self, lines: int = 40) -> str:
        """The last lines of the log of a server we launched (also once stopped); empty when attached."""
        if not self.launched:
            return ""
        return self.server.log_tail(lines) if self.server is not None else self._last_log_tail

    # --- measuring ---------------------------------------------------------------------------------
    @property
    def runner(self) -> LoadRunner:
        """The LoadRunner bound to the server, with telemetry observers; created on first use after a
        start, which also records the start (`run.extra["server_starts"]`). Its load workers are started
        and checked first (`LoadRunner.start`): SetupError, naming the fix, before the first request, and
        the same SetupError for every later use (a fault of the set-up is not retried per test)."""
        if self._setup_error is not None:
            raise self._setup_error
        if self._runner is None:
            runner = self._stack.enter_context(self._make_runner())
            try:
                runner.start()
                self._runner = runner
                if self.launched and self.server is not None:
                    self._server_start = self._record_start(self.server, runner)
            except SetupError as exc:
                if not isinstance(exc, ServerStoppedError):
                    self._setup_error = exc
                raise
        return self._runner

    def measure(self, spec: CellSpec) -> CellResult:
        """Measure one repeat of a cell on this side and record it. ServerStoppedError when the server is
        not up: a measurement is never attempted on a server that is gone. With --llm-warmup cell, the
        first measurement of each cell after a start is preceded by an unrecorded run of the same cell.
        SetupError when the tool's set-up cannot measure: the cell is recorded as failed (cause "setup",
        its error naming the fix), then the error is raised."""
        self._check_alive()
        try:
            runner = self.runner
            if self.settings.effective_warmup == "cell" and spec.key not in self._warmed:
                self._keep_cold(runner.run_cell(spec))
                self._warmed.add(spec.key)
                self._check_alive()
            cell = runner.run_cell(spec)
        except SetupError as exc:
            if not isinstance(exc, ServerStoppedError):  # the session's own stop: never a recorded cell
                self._setup_error = exc
                self.record(_setup_failed(spec, exc))
            raise
        return self.record(cell)

    def _keep_cold(self, cell: CellResult) -> None:
        """The warm-up run, kept as the cost of a cold start (a summary, never a repeat of the cell)."""
        e2e, ttft = cell.value("e2e", "p50"), cell.value("ttft", "p50")
        self.run.extra.setdefault(COLD_KEY, []).append({
            "cell": cell.label, "start_index": self.starts - 1, "ok": cell.ok, "valid": cell.valid,
            "e2e_p50_s": e2e, "ttft_p50_s": ttft, "error": None if cell.ok else (cell.error or "").splitlines()[0]})

    def warm_up(self, spec: CellSpec) -> CellResult:
        """Run a cell without recording it (caches and code paths loaded before a measurement)."""
        self._check_alive()
        return self.runner.run_cell(spec)

    def _check_alive(self) -> None:
        """ServerStoppedError when the session itself stopped or closed this side. A server that died on
        its own while up is the server under test failing: the runner records its cells as failed
        ("server died", with the log tail), fast, and the session goes on."""
        if self.state != "up" or self.server is None:
            raise ServerStoppedError(f"side {self.name}: the session stopped its server ({self.state}) before "
                                     "this measurement; a measurement is never attempted on it")

    def record(self, cell: CellResult) -> CellResult:
        """Keep a cell in the run and update the partial reports, so nothing is lost if the session dies.
        The cell carries its server's start (`extra["server_start"]`) for run-level objectives."""
        extra = {**cell.extra, START_INDEX: self.starts - 1}
        if self._server_start is not None:
            extra[SERVER_START] = self._server_start
        cell = dataclasses.replace(cell, extra=extra)
        self.run.cells.append(cell)
        self.write_reports(formats=("json", "csv"))
        return cell

    def sample_start(self) -> dict[str, float | None] | None:
        """Start the launched server once more (after `stop()`), measure its start, and stop it: one more
        sample for a gate on `startup` / `first_ttft`. None when attached."""
        if not self.launched:
            return None
        self.start()
        try:
            self.runner  # noqa: B018 - creating the runner records the start
            return self._server_start
        finally:
            self.stop()

    def _record_start(self, server: ServerHandle, runner: LoadRunner) -> dict[str, float | None]:
        """Time to ready and the TTFT of the first request after it (a probe, not recorded as a cell),
        kept in `run.extra["server_starts"]`: run-level metrics `startup` and `first_ttft`."""
        probe = runner.run_cell(PROBE)
        first = probe.records[0] if probe.ok and probe.records else None
        start = {"startup_s": server.startup_s, "first_ttft_s": None if first is None else first.ttft,
                 "health_s": getattr(server, "health_s", None)}  # launch -> /health, a phase of startup_s
        self.run.extra.setdefault(STARTS_KEY, []).append(start)
        return start

    # --- how the server starts and where things run -------------------------------------------------
    def _server_context(self) -> contextlib.AbstractContextManager[AttachedServer | VLLMServer]:
        from ..server.attach import AttachedServer
        from ..server.launch import VLLMServer

        s = self.settings
        if s.base_url:
            return AttachedServer(s.base_url, api_key=s.api_key, model=s.served_model_name)
        self.spec = self.server_spec()
        return VLLMServer(self.spec)

    def _plan_placement(self) -> Placement | None:
        """Where the client (and a server we launch) will run; None leaves both where the OS puts them."""
        from ..server.placement import (
            allowed_cpus,
            plan_cpu_placement,
            plan_pinned_client,
        )
        from ..server.spec import resolve_device

        s = self.settings
        try:
            if not s.base_url and resolve_device(s.device) == "cpu":
                return plan_cpu_placement(allowed_cpus(), s.client_cpus)
            return None if s.client_cpus is None else plan_pinned_client(allowed_cpus(), s.client_cpus)
        except ValueError as exc:
            raise ConfigError(f"--llm-client-cpus: {exc}") from None

    def _place_client(self, server: ServerHandle) -> PlacementReport:
        """Move every thread of ours to the planned CPUs (restored at stop), then check where both sides
        may actually run."""
        from ..server.placement import Placement, allowed_cpus, check_placement

        self._stack.enter_context(self.client_placed())
        return check_placement(self.placement or Placement(allowed_cpus(), note="not pinned"), server.tree_pids())

    @contextlib.contextmanager
    def client_placed(self) -> Iterator[None]:
        """Our threads on the client's cores for the block (as while the session measures), then back."""
        from ..server.placement import allowed_cpus, set_own_affinity

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

    def server_spec(self) -> ServerSpec:
        """The ServerSpec: the model's preset layout, overridden by every layout option given; launched
        from this side's own vLLM install (--llm-vllm, B's --llm-candidate-vllm), with the placement's
        environment and then the side's own --llm-server-env (B's --llm-candidate-server-env) over it."""
        from ..server.install import resolve_install
        from ..server.presets import resolve_model
        from ..server.spec import merge_env, spec_from_choice

        s = self.settings
        install = resolve_install(s.vllm, option="--llm-vllm" if self.name == "A" else "--llm-candidate-vllm")
        choice = self.model_choice = resolve_model(s.model, s.cache_path())
        given = {"tensor_parallel": s.tp, "pipeline_parallel": s.pp, "quantization": s.quantization,
                 "dtype": s.dtype, "max_model_len": s.max_model_len, "served_model_name": s.served_model_name}
        return spec_from_choice(
            choice, **{k: v for k, v in given.items() if v is not None},
            gpus=s.gpus, extra_args=tuple(s.server_arg), startup_timeout_s=s.startup_timeout, host=s.host,
            device=s.device, log_dir=self.report_dir(), cache_dir=s.cache_path(),
            cpus=self.placement.server_cpus if self.placement else (),
            nice=self.placement.server_nice if self.placement else 0,
            env=merge_env(self.placement.server_env() if self.placement else {}, dict(s.server_env)),
            install=install,
        )

    def _environment(self, server: ServerHandle) -> dict[str, Any]:
        from ..observe.environment import collect_environment

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

    def _make_runner(self) -> LoadRunner:
        from ..load.runner import LoadRunner

        server = self.start()
        s = self.settings
        return LoadRunner(
            server.base_url, server.model, api_key=server.api_key or s.api_key, api=s.api,
            request_timeout_s=s.request_timeout,
            server_status=server.returncode if self.launched else None,
            log_tail=self.server_log_tail if self.launched else None,
            observers=self._observers(server), shared_prefix=s.shared_prefix,
            progress=None if self.progress_stream is None else True, progress_stream=self.progress_stream,
            tokenizer_path=self._tokenizer_path(), **self._load_workers(),
        )

    def _load_workers(self) -> dict[str, Any]:
        """Where the load workers run (--llm-load-workers, --llm-load-cluster, --llm-ray-address): locally,
        `auto` is one worker per core the client may use, each pinned to its own core when the client is."""
        from ..load.processes import auto_workers
        from ..server.placement import allowed_cpus

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
        from ..observe.gpu import GpuTelemetry
        from ..observe.physical import PhysicalLimitObserver
        from ..observe.processes import ProcessCpuObserver
        from ..observe.server_metrics import ServerMetricsObserver
        from ..server.placement import allowed_cpus

        gpus = None if not self.settings.gpus else [int(g) for g in self.settings.gpus.split(",")]
        observers: list[CellObserver] = [
            GpuTelemetry(interval_s=self.settings.telemetry_interval, gpu_indices=gpus),
            ServerMetricsObserver(server.base_url, api_key=server.api_key or self.settings.api_key),
        ]
        if self.launched:
            observers.append(ProcessCpuObserver(server.tree_pids, allowed_cpus))
        facts = self._model_facts()
        if facts is not None:
            tp = self.spec.tensor_parallel if self.spec else (self.settings.tp or 1)
            observers.append(PhysicalLimitObserver(facts, gpu_indices=gpus, tensor_parallel=tp))
        for observer in observers:
            self._stack.callback(observer.close)  # their threads and HTTP clients end with the server
        return observers

    def _model_facts(self) -> ModelFacts | None:
        from ..observe.physical import model_facts_for

        if self.model_choice is None:
            return None
        try:
            return model_facts_for(self.model_choice, self.settings.quantization, self.settings.dtype)
        except Exception as exc:  # noqa: BLE001 - the physical limit is a report section, never a failure
            self.run.environment.setdefault("warnings", []).append(f"physical limit unavailable: {exc}")
            return None

    # --- reports -----------------------------------------------------------------------------------
    def report_dir(self) -> Path:
        path = Path(self.settings.report_dir)
        return path if path.is_absolute() else self.rootdir / path

    def write_reports(self, formats: tuple[str, ...] = ("json", "csv", "md", "html")) -> list[Path]:
        """Write the reports; a format that fails is noted, never raised, so the others still land."""
        from ..report import ReportWriteError, ReportWriter

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


def _setup_failed(spec: CellSpec, exc: SetupError) -> CellResult:
    """The cell a set-up fault kept from being measured: failed, cause "setup", the error naming the fix."""
    return CellResult(users=spec.users, prompt_tokens=spec.prompt_tokens, max_tokens=spec.max_tokens, ok=False,
                      error=str(exc), mode=spec.mode, rate=spec.rate, rounds=spec.rounds, cause="setup")
