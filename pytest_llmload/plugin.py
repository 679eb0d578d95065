"""The pytest11 entry point: options, ini, markers, fixtures and report hooks. Thin: it delegates to
`session.LoadSession` (server, runner, reports) and `slo` (objectives).

Fixtures, from the bottom up (each can be overridden in a user's conftest.py):
    llm_settings   session   the resolved --llm-* options (options.Settings)
    llm_session    session   the LoadSession: owns the server, the runner and the run
    llm_server     session   the started vLLM (or the attached server): .base_url, .model, .log_path
    llm_load       function  callable: llm_load(users=32, prompt_tokens=480) -> CellResult; .max_users(...)
    llm_matrix     session   the configured users x prompt-size matrix, measured once
    llm_cell       function  one cell of that matrix; a test that asks for it is parametrized over the matrix
    llm_slos       session   the objectives from --llm-slo-file and the ini option llm_slo
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pytest

from . import objectives as slo_mod
from .errors import ConfigError, InvalidMeasurement, InvalidMeasurementWarning, LLMLoadError, SLOViolation
from .gate.capacity import Inconclusive
from .measure import LoadFixture, Matrix
from .options import OPTIONS, Settings
from .results import CellResult
from .session import LoadSession, check_settings

if TYPE_CHECKING:
    from .finish import FinishState  # noqa: F401 - named in the StashKey below
    from .server import ServerHandle

SESSION_KEY = pytest.StashKey[LoadSession]()
SETTINGS_KEY = pytest.StashKey[Settings]()
CELLS_KEY = pytest.StashKey[list[CellResult]]()
JUDGED_KEY = pytest.StashKey[set[int]]()  # id() of the cells an objective was checked against in the test
FINISH_KEY = pytest.StashKey["FinishState"]()  # the cells a test measured or read, for its llm_slo marker

MARKER_HELP = ("llm_slo(**objectives): objectives checked against the cells the test measured, e.g. "
               "llm_slo(users=32, e2e_p95_s=20); keys: " + slo_mod.KEY_HELP)


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
    config.addinivalue_line("markers", MARKER_HELP)
    try:
        settings = Settings.from_values(lambda dest: config.getoption(dest, None),
                                        lambda name: config.getini(name))
        check_settings(settings)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[SETTINGS_KEY] = settings
    config.stash[SESSION_KEY] = LoadSession(settings, rootdir=config.rootpath)


def pytest_sessionstart(session: pytest.Session) -> None:
    _load_session(session.config).progress_stream = _terminal_for_progress(session.config)


def _terminal_for_progress(config: pytest.Config) -> Any:
    """The controlling terminal, when pytest writes to one: pytest captures stdout/stderr during tests,
    so the progress line goes around it. None (no progress) when output is not a terminal."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not reporter._tw.hasmarkup or config.option.capture == "no":
        return None  # not a terminal (or --color=no); with -s stderr itself is the terminal
    try:
        stream = open("/dev/tty", "w")  # noqa: SIM115 - closed with the session
    except OSError:
        return None
    config.add_cleanup(stream.close)
    return stream


def _load_session(config: pytest.Config) -> LoadSession:
    return config.stash[SESSION_KEY]


# --- collection: markers and parametrization -----------------------------------------------------------
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Reject unknown llm_slo keys at collection, not after an expensive run."""
    for item in items:
        for mark in item.iter_markers("llm_slo"):
            if mark.args:
                raise pytest.UsageError(f"{item.nodeid}: llm_slo takes keyword arguments only, got {mark.args!r}")
            try:
                slo_mod.SLO.from_kwargs(mark.kwargs, where=f"{item.nodeid}: @pytest.mark.llm_slo")
            except ConfigError as exc:
                raise pytest.UsageError(str(exc)) from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that asks for `llm_cell` becomes one item per cell of the configured matrix."""
    if "llm_cell" in metafunc.fixturenames:
        s = metafunc.config.stash[SETTINGS_KEY]
        cells = [(u, p) for p in s.prompt_tokens for u in s.users]
        metafunc.parametrize("llm_cell", cells, indirect=True, ids=[f"u{u}-p{p}" for u, p in cells])


# --- fixtures ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def llm_settings(pytestconfig: pytest.Config) -> Settings:
    """The resolved --llm-* options."""
    return pytestconfig.stash[SETTINGS_KEY]


@pytest.fixture(scope="session")
def llm_session(pytestconfig: pytest.Config) -> LoadSession:
    """The session object behind every other fixture (server, runner, recorded run)."""
    return _load_session(pytestconfig)


@pytest.fixture(scope="session")
def llm_server(llm_session: LoadSession) -> Iterator[ServerHandle]:
    """The vLLM server for this session: started from --llm-model and the layout options, or attached
    with --llm-base-url. Has `.base_url`, `.model` (the served name) and `.log_path`."""
    try:
        server = llm_session.start_server()
    except LLMLoadError as exc:
        pytest.fail(f"pytest-llmload could not start the server: {exc}", pytrace=False)
    yield server
    llm_session.close()


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
def llm_slos(pytestconfig: pytest.Config, llm_settings: Settings) -> list[slo_mod.SLO]:
    """Objectives from --llm-slo-file and the `llm_slo` ini lines (one SLO each)."""
    try:
        slos = [slo_mod.parse_slo_line(line, f"ini llm_slo line {i + 1}")
                for i, line in enumerate(pytestconfig.getini("llm_slo"))]
        if llm_settings.slo_file:
            slos += slo_mod.load_slo_file(llm_settings.slo_file)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    return slos


# --- checking objectives, reporting failures -------------------------------------------------------------
def check_marker_slos(item: pytest.Item) -> None:
    """Check the item's llm_slo markers against the cells it measured (or the matrix cells they select)."""
    cells = item.stash.get(CELLS_KEY, [])
    for mark in item.iter_markers("llm_slo"):
        objective = slo_mod.SLO.from_kwargs(mark.kwargs, where=f"{item.nodeid}: @pytest.mark.llm_slo")
        targets = [c for c in cells if objective.applies_to(c)] or _selected_cells(item, objective)
        if not targets:
            raise SLOViolation(f"llm_slo({objective.describe()}): no measured cell matches its selectors")
        record_and_check(item, objective, targets)


def _selected_cells(item: pytest.Item, objective: slo_mod.SLO) -> list[CellResult]:
    """Cells a declarative marker selects when the test measured none: from the session's matrix."""
    session = _load_session(item.config)
    session.start_server()
    s = session.settings
    users = sorted(objective.users or s.users)
    prompts = sorted(objective.prompt_tokens or s.prompt_tokens)
    return [session.cached_cell(u, p, objective.max_tokens) for p in prompts for u in users]


def record_and_check(item: pytest.Item, objective: slo_mod.SLO, cells: list[CellResult]) -> None:
    """Check every cell (observed values land in the JUnit properties); one SLOViolation for all misses."""
    messages = []
    for cell in cells:
        try:
            objective.check(cell)
        except SLOViolation as exc:
            messages.append(str(exc))
    if messages:
        raise SLOViolation("\n".join(messages))


def _property_recorder(item: pytest.Item) -> Callable[[slo_mod.SLO, slo_mod.Judged], None]:
    """An objectives observer putting each observed value into the item's JUnit XML properties."""

    def record(objective: slo_mod.SLO, cell: slo_mod.Judged) -> None:
        item.stash.setdefault(JUDGED_KEY, set()).add(id(cell))  # its validity was judged by the check
        for obj, observed, _met in objective.evaluate(cell):
            value = "n/a" if observed is None else f"{observed:.6g}"
            item.user_properties.append((f"{obj.property_name}[u{cell.users}-p{cell.prompt_tokens}]", value))

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    allow_invalid = item.config.stash[SETTINGS_KEY].allow_invalid
    with slo_mod.observing(_property_recorder(item), allow_invalid=allow_invalid):
        result = yield
        if any(True for _ in item.iter_markers("llm_slo")):
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
    elif report.failed and "llm_server" in getattr(item, "fixturenames", ()):
        tail = _load_session(item.config).server_log_tail()
        if tail:
            report.sections.append(("llmload: server log (last lines)", tail))
    return report


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """An invalid measurement is an error (the tool could not measure), not a failure of the server."""
    if report.failed and ("llm_invalid_measurement", "true") in report.user_properties:
        return "error", "E", "ERROR (invalid measurement)"
    return None


# --- end of session: reports, baselines, gates -------------------------------------------------------------
@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Generator[None, None, None]:
    """Before the other plugins finish: write reports and run the gates (also on failure or Ctrl-C), and
    hand the cells to pytest-benchmark before it saves its own file."""
    from .finish import finish_session

    load = session.config.stash.get(SESSION_KEY, None)
    if load is not None:
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
    from .finish import terminal_summary

    load = config.stash.get(SESSION_KEY, None)
    state = config.stash.get(FINISH_KEY, None)
    if load is not None and state is not None:
        terminal_summary(load, state, terminalreporter.write_line)


def pytest_unconfigure(config: pytest.Config) -> None:
    load = config.stash.get(SESSION_KEY, None)
    if load is not None:
        load.close()
