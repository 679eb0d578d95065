"""The pytest11 entry point: options, ini, markers, fixtures and report hooks. Thin: it delegates to
the `session` package (`LoadSession`: sides, servers, plan, reports; `session.fixtures`: what tests hold
and the objective checks; `session.finish`: the end of the session).

Installed, the plugin is loaded into every pytest run of the environment, so it costs nothing where it
is not used: the LoadSession is created by the first fixture, marker or objective that needs it, and
the end of the session writes and prints nothing when no cell was measured.

Fixtures, from the bottom up (each can be overridden in a user's conftest.py):
    llm_settings     session   the resolved --llm-* options (options.Settings)
    llm_server_args  session   extra `vllm serve` arguments of A's server (default: --llm-server-arg)
    llm_session      session   the LoadSession: owns the servers (until the session's very end) and the runs
    llm_server       session   the started vLLM (or the attached server): .base_url, .model, .log_path
    llm_load       function  callable: llm_load(users=32, prompt_tokens=480) -> CellResult; .max_users(...)
    llm_matrix     session   the configured users x prompt-size matrix, measured once
    llm_cell       function  one cell of that matrix; a test that asks for it is parametrized over the matrix
    llm_slos       session   the objectives from --llm-slo-file and the ini option llm_slo

Objectives from --llm-slo-file and the ini option `llm_slo` are test items of their own (ObjectiveItem,
one per objective, under a collector named after the file that declares them).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

from . import objectives as slo_mod
from .errors import ConfigError, InvalidMeasurement, InvalidMeasurementWarning, LLMLoadError, SLOViolation
from .gate.capacity import Inconclusive
from .options import OPTIONS, Settings
from .results import CellResult
from .session import LoadSession, check_settings
from .session.fixtures import LoadFixture, Matrix, check_objective

if TYPE_CHECKING:
    from .report.summary import Summary  # noqa: F401 - named in the StashKey below
    from .server import ServerHandle

SESSION_KEY = pytest.StashKey[LoadSession]()
SETTINGS_KEY = pytest.StashKey[Settings]()
SLOS_KEY = pytest.StashKey[dict[Path, list[slo_mod.SLO]]]()  # configured objectives by declaring file
CELLS_KEY = pytest.StashKey[list[CellResult]]()  # the cells a test measured or read, for its llm_slo marker
JUDGED_KEY = pytest.StashKey[set[int]]()  # id() of the cells an objective was checked against in the test
FINISH_KEY = pytest.StashKey["Summary"]()

# A test that uses one of these (directly or through another fixture) is a load test.
LOAD_FIXTURES = frozenset({"llm_session", "llm_slos"})

MARKER_HELP = ("llm_slo(**objectives): objectives checked against the cells the test measured, e.g. "
               "llm_slo(users=32, e2e_p95_s=20); keys: " + slo_mod.KEY_HELP)

XDIST_MESSAGE = (
    "pytest-llmload runs load tests in one process, and pytest-xdist ({how}) would spread them over "
    "workers: each worker would start its own vLLM, cells that two workers measure at once on one server "
    "would disturb each other's numbers, and each worker would write its own reports and run its own "
    "regression gates. Run the load tests without xdist: add -n 0 (or -p no:xdist).")


# --- options -----------------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmload", "LLM server load testing (pytest-llmload)")
    for opt in OPTIONS:
        help_text = opt.help_text
        if opt.kind == "flag":
            group.addoption(opt.flag, action="store_true", default=None, dest=opt.dest, help=help_text)
        elif opt.kind == "append":
            group.addoption(opt.flag, action="append", default=None, dest=opt.dest, metavar=opt.metavar,
                            type=opt.parse, help=help_text)
        else:
            group.addoption(opt.flag, action="store", default=None, dest=opt.dest, metavar=opt.metavar,
                            type=opt.parse, help=help_text)
        ini_type: Literal["linelist", "string"] = "linelist" if opt.kind == "append" else "string"
        parser.addini(opt.ini, f"{opt.help} (ini mirror of {opt.flag})", type=ini_type, default=None)
    group.addoption("--llm-list-presets", action="store_true", default=False,
                    help="Show the model presets (model, GPU layout, study table) and exit.")
    parser.addini("llm_slo", "Objectives, one per line: users=32 prompt_tokens=31,63 e2e_p95_s=20",
                  type="linelist", default=[])


def pytest_cmdline_main(config: pytest.Config) -> int | None:
    """`--llm-list-presets`: print the presets and stop, like `pytest --markers`."""
    if not config.getoption("llm_list_presets", False):
        return None
    from .server.presets import PRESETS

    for name, p in PRESETS.items():
        layout = f"tp={p.tensor_parallel} pp={p.pipeline_parallel} {p.quantization or p.dtype or 'auto'}"
        study = f"study table {p.study_table}" if p.study_table else ""
        print(f"{name:<22} {p.model or '(built locally)':<48} {layout:<22} {p.gpus:<16} {study}")
    return 0


def pytest_configure(config: pytest.Config) -> None:
    """Resolve and check the options and the configured objectives (bad ones fail now, naming the
    source); nothing is started here."""
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = Settings.from_values(lambda dest: config.getoption(dest, None),
                                        lambda name: config.getini(name))
        check_settings(settings)
        config.stash[SLOS_KEY] = _configured_slos(config, settings)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SETTINGS_KEY] = settings
    _refuse_xdist(config)


def _configured_slos(config: pytest.Config, settings: Settings) -> dict[Path, list[slo_mod.SLO]]:
    """The objectives of the `llm_slo` ini lines (under the ini file) and of --llm-slo-file (under it)."""
    sources: dict[Path, list[slo_mod.SLO]] = {}
    lines = config.getini("llm_slo")
    if lines:
        inipath = config.inipath or config.rootpath / "llm_slo"
        sources[inipath] = [slo_mod.parse_slo_line(line, f"ini llm_slo line {i + 1}") for i, line in enumerate(lines)]
    if settings.slo_file:
        path = _slo_file_path(config, settings.slo_file)
        sources.setdefault(path, []).extend(slo_mod.load_slo_file(_shown(path, config.invocation_params.dir)))
    return sources


def _slo_file_path(config: pytest.Config, value: str) -> Path:
    """A relative --llm-slo-file is relative to where pytest was invoked; in the ini file, to that file."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    from_ini = config.getoption("llm_slo_file", None) is None and config.inipath is not None
    base = config.inipath.parent if from_ini and config.inipath else config.invocation_params.dir
    return (base / path).resolve()


def _shown(path: Path, base: Path) -> str:
    """`path` relative to `base` when it lies below it (shorter messages), else absolute."""
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def _xdist_workers(config: pytest.Config) -> str | None:
    """How pytest-xdist distributes this run (e.g. "-n 2"), None when it does not."""
    if hasattr(config, "workerinput"):
        return f"worker {config.workerinput.get('workerid', '?')}"
    if getattr(config.option, "dist", "no") in (None, "no") or config.option.collectonly:
        return None
    n = getattr(config.option, "numprocesses", None)
    return f"-n {n}" if n else f"--dist {config.option.dist}"


def _refuse_xdist(config: pytest.Config) -> None:
    """With -n and an --llm-* option on the command line, the run is meant to load-test: refuse it now.
    Without one, only the load tests themselves fail (in the workers), with the same message."""
    how = _xdist_workers(config)
    if how is None or hasattr(config, "workerinput"):
        return
    given = [o.flag for o in OPTIONS if config.getoption(o.dest, None) not in (None, [], ())]
    if given:
        raise pytest.UsageError(f"{given[0]}: " + XDIST_MESSAGE.format(how=how))


def _load_session(config: pytest.Config, settings: Settings | None = None) -> LoadSession:
    """The session's LoadSession, created on first use (a run that loads nothing never makes one), with
    the fixtures' settings when a fixture creates it (a conftest override of `llm_settings` counts)."""
    session = config.stash.get(SESSION_KEY, None)
    if session is None:
        if hasattr(config, "workerinput"):
            pytest.fail(XDIST_MESSAGE.format(how=_xdist_workers(config)), pytrace=False)
        session = config.stash[SESSION_KEY] = LoadSession(settings or config.stash[SETTINGS_KEY],
                                                          rootdir=config.rootpath)
        session.progress_stream = _terminal_for_progress(config)
    return session


def _terminal_for_progress(config: pytest.Config) -> Any:
    """The controlling terminal, when pytest writes to one: pytest captures stdout/stderr during tests,
    so the progress line goes around it. None (no progress) when output is not a terminal."""
    if config.pluginmanager.get_plugin("terminalreporter") is None or config.option.capture == "no":
        return None  # no terminal output; with -s stderr itself is the terminal
    if not config.get_terminal_writer().hasmarkup:
        return None  # not a terminal (or --color=no)
    try:
        stream = open("/dev/tty", "w")  # noqa: SIM115 - closed with the session
    except OSError:
        return None
    config.add_cleanup(stream.close)
    return stream


# --- collection: markers, parametrization, configured objectives ----------------------------------------
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """The --llm-slo-file itself, where pytest collects it (its node ids then select single objectives)."""
    sources = parent.config.stash.get(SLOS_KEY, None)
    if sources and file_path in sources and file_path != parent.config.inipath:
        return ObjectivesFile.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)  # before -k / -m / --deselect, which then apply to objectives too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_markers(items)
    _add_objective_items(session, config, items)


def _check_markers(items: list[pytest.Item]) -> None:
    """Reject unknown llm_slo keys at collection, not after an expensive run."""
    for item in items:
        for mark in item.iter_markers("llm_slo"):
            if mark.args:
                raise pytest.UsageError(f"{item.nodeid}: llm_slo takes keyword arguments only, got {mark.args!r}")
            try:
                slo_mod.SLO.from_kwargs(mark.kwargs, where=f"{item.nodeid}: @pytest.mark.llm_slo")
            except ConfigError as exc:
                raise pytest.UsageError(str(exc)) from None


def _is_load_test(item: pytest.Item) -> bool:
    return (isinstance(item, ObjectiveItem) or not LOAD_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
            or item.get_closest_marker("llm_slo") is not None)


def _add_objective_items(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Configured objectives join the run when it load-tests, when --llm-slo-file is on the command line,
    or when there is nothing else to run (`pytest --llm-slo-file deploy.toml` gates a deployment)."""
    sources = config.stash.get(SLOS_KEY, {})
    if not sources:
        return
    if not (config.getoption("llm_slo_file", None) or not items or any(_is_load_test(i) for i in items)):
        return
    collected = {i.parent.path for i in items if isinstance(i, ObjectiveItem) and i.parent is not None}
    for path in sources:
        if path not in collected:
            items.extend(session.genitems(ObjectivesFile.from_parent(session, path=path)))
    _start_objectives_last(items)


def _start_objectives_last(items: list[pytest.Item]) -> None:
    """Objectives on the server's start run after every other item: they are judged on the starts made by
    then, and the cells before them have already started the servers they need (when A/B sides take turns,
    a start objective run first would start B, and the next cell would start A again)."""
    last: list[pytest.Item] = [i for i in items if isinstance(i, ObjectiveItem) and i.slo.start_objectives]
    if last:
        moved = {id(i) for i in last}
        items[:] = [i for i in items if id(i) not in moved] + last


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that asks for `llm_cell` becomes one item per cell of the configured matrix."""
    if "llm_cell" in metafunc.fixturenames:
        s = metafunc.config.stash[SETTINGS_KEY]
        cells = [(u, p) for p in s.prompt_tokens for u in s.users]
        metafunc.parametrize("llm_cell", cells, indirect=True, ids=[f"u{u}-p{p}" for u, p in cells])


class ObjectivesFile(pytest.File):
    """The objectives one file declares (the --llm-slo-file, or the ini file for `llm_slo` lines)."""

    def collect(self) -> Iterator[ObjectiveItem]:
        seen: dict[str, int] = {}
        for slo in self.config.stash[SLOS_KEY].get(self.path, []):
            seen[slo.title] = seen.get(slo.title, 0) + 1
            name = slo.title if seen[slo.title] == 1 else f"{slo.title} ({seen[slo.title]})"
            yield ObjectiveItem.from_parent(self, name=name, slo=slo)


class ObjectiveItem(pytest.Item):
    """One configured objective as a test: its cells meet it, or, with `min_users`, the server holds that
    many users at every prompt size it names."""

    def __init__(self, *, slo: slo_mod.SLO, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slo = slo

    def runtest(self) -> None:
        allow_invalid = self.config.stash[SETTINGS_KEY].allow_invalid
        with slo_mod.observing(_property_recorder(self), allow_invalid=allow_invalid):
            check_objective(_load_session(self.config), self.slo)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> str | Any:
        if isinstance(excinfo.value, SLOViolation):
            return f"objective {self.name!r} ({self.slo.source}) missed:\n{excinfo.value}"
        if isinstance(excinfo.value, LLMLoadError):
            return f"objective {self.name!r} ({self.slo.source}) could not be checked:\n{excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"objective: {self.name}"


# --- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llm_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved --llm-* options."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def llm_server_args(llm_settings: Settings) -> list[str]:
    """Extra `vllm serve` arguments of the server the session launches (A). Override it in a conftest.py
    to set them in code; default: the --llm-server-arg values."""
    return list(llm_settings.server_arg)


@pytest.fixture(scope="session")
def llm_session(pytestconfig: pytest.Config, llm_settings: Settings, llm_server_args: list[str]) -> LoadSession:
    """The session object behind every other fixture (servers, runs). It owns the servers: they stay up
    until the end of the pytest session, after the last repeat and the reports."""
    settings = llm_settings
    if tuple(llm_server_args) != settings.server_arg:
        settings = dataclasses.replace(settings, server_arg=tuple(llm_server_args))
    return _load_session(pytestconfig, settings)


@pytest.fixture(scope="session")
def llm_server(llm_session: LoadSession) -> Iterator[ServerHandle]:
    """The vLLM server for this session: started from --llm-model and the layout options, or attached
    with --llm-base-url. Has `.base_url`, `.model` (the served name) and `.log_path`. Its teardown stops
    nothing: the session stops the server at its very end."""
    try:
        with llm_session.serving() as server:
            yield server
    except LLMLoadError as exc:
        pytest.fail(f"pytest-llmload could not start the server: {exc}", pytrace=False)


@pytest.fixture
def llm_load(llm_server: ServerHandle, llm_session: LoadSession, request: pytest.FixtureRequest) -> LoadFixture:
    """Callable: `llm_load(users=32, prompt_tokens=480, max_tokens=100) -> CellResult`."""
    return LoadFixture(llm_session, request.node.stash.setdefault(CELLS_KEY, []).append)


@pytest.fixture(scope="session")
def llm_matrix(llm_server: ServerHandle, llm_session: LoadSession) -> Matrix:
    """Every cell of --llm-users x --llm-prompt-tokens, measured once for the whole session."""
    llm_session.matrix()
    return Matrix(llm_session)


@pytest.fixture
def llm_cell(request: pytest.FixtureRequest, llm_server: ServerHandle, llm_session: LoadSession) -> CellResult:
    """One cell of the matrix (the test is parametrized over all of them); measured on first use."""
    users, prompt_tokens = request.param
    cell = llm_session.cached_cell(users, prompt_tokens)
    request.node.stash.setdefault(CELLS_KEY, []).append(cell)
    request.node.stash.setdefault(JUDGED_KEY, set()).add(id(cell))
    with slo_mod.observing(allow_invalid=llm_session.settings.allow_invalid):
        slo_mod.require_valid(cell, "this test")  # an error at setup: the test never sees invalid numbers
    return cell


@pytest.fixture(scope="session")
def llm_slos(pytestconfig: pytest.Config) -> list[slo_mod.SLO]:
    """Objectives from --llm-slo-file and the `llm_slo` ini lines (one SLO each); the plugin checks them
    itself, as test items named after them."""
    return [slo for slos in pytestconfig.stash[SLOS_KEY].values() for slo in slos]


# --- checking objectives, reporting failures -------------------------------------------------------------
def check_marker_slos(item: pytest.Item) -> None:
    """Check the item's llm_slo markers against the cells it measured, else against the cells they select
    (measured for it), or, with `min_users`, as a capacity objective; start objectives on the starts."""
    cells = item.stash.get(CELLS_KEY, [])
    for mark in item.iter_markers("llm_slo"):
        objective = slo_mod.SLO.from_kwargs(mark.kwargs, where=f"{item.nodeid}: @pytest.mark.llm_slo")
        measured = [c for c in cells if objective.applies_to(c)]
        check_objective(_load_session(item.config), objective, measured or None)


def _property_recorder(item: pytest.Item) -> Callable[[slo_mod.SLO, slo_mod.Judged], None]:
    """An objectives observer putting each observed value into the item's JUnit XML properties, in the
    unit its name says (`llm_ttft_p99_ms[u32-p480]` in ms)."""

    def record(objective: slo_mod.SLO, cell: slo_mod.Judged) -> None:
        item.stash.setdefault(JUDGED_KEY, set()).add(id(cell))  # its validity was judged by the check
        for obj, observed, _met in objective.evaluate(cell):
            name = f"{obj.property_name}[u{cell.users}-p{cell.prompt_tokens}]"
            item.user_properties.append((name, obj.property_value(observed)))

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    if not _is_load_test(item) or isinstance(item, ObjectiveItem):
        return (yield)
    allow_invalid = item.config.stash[SETTINGS_KEY].allow_invalid
    with slo_mod.observing(_property_recorder(item), allow_invalid=allow_invalid):
        result = yield
        if item.get_closest_marker("llm_slo") is not None:
            check_marker_slos(item)
    _warn_about_invalid_cells(item)
    return result


def _warn_about_invalid_cells(item: pytest.Item) -> None:
    """A test that passed on cells the tool cannot vouch for (its own asserts read them) says so; cells
    an objective was checked against have had their say already."""
    judged = item.stash.get(JUDGED_KEY, set())
    invalid = {id(c): c for c in item.stash.get(CELLS_KEY, []) if not c.valid and id(c) not in judged}
    for cell in invalid.values():
        warnings.warn(InvalidMeasurementWarning(slo_mod.invalid_message(cell, "its numbers")), stacklevel=1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(Inconclusive):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"inconclusive: {call.excinfo.value}")
    elif call.excinfo is not None and call.excinfo.errisinstance(InvalidMeasurement):
        report.longrepr = str(call.excinfo.value)  # the reasons are the message; no traceback needed
        report.user_properties.append(("llm_invalid_measurement", "true"))
    elif report.failed and (load := item.config.stash.get(SESSION_KEY, None)) is not None and _is_load_test(item):
        tail = load.server_log_tail()
        if tail:
            report.sections.append(("llmload: server log (last lines)", tail))
    return report


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """An invalid measurement is an error (the tool could not measure), not a failure of the server."""
    if report.failed and ("llm_invalid_measurement", "true") in getattr(report, "user_properties", ()):
        return "error", "E", "ERROR (invalid measurement)"
    return None


# --- end of session: reports, baselines, gates -------------------------------------------------------------
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, None, None]:
    """Before the other plugins finish: write reports and run the gates (also on failure or Ctrl-C), and
    hand the cells to pytest-benchmark before it saves its own file. Nothing when nothing was loaded."""
    load = session.config.stash.get(SESSION_KEY, None)
    if load is not None:
        from .session.finish import finish_session

        load.run.interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        state = session.config.stash[FINISH_KEY] = finish_session(load, session.config)
        if state.gate_failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    try:
        return (yield)
    finally:
        if load is not None:
            load.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    load = config.stash.get(SESSION_KEY, None)
    state = config.stash.get(FINISH_KEY, None)
    if load is not None and state is not None:
        from .report.summary import summary_lines

        for line in summary_lines(state):
            terminalreporter.write_line(line)


def pytest_unconfigure(config: pytest.Config) -> None:
    load = config.stash.get(SESSION_KEY, None)
    if load is not None:
        load.close()
