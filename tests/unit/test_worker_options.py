"""Load workers, the parts that start nothing: how many, on which cores, the options (the workers
themselves run in tests/integration/test_workers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_llmload.load.processes import ProcessBackend, auto_workers
from pytest_llmload.load.runner import make_backend
from pytest_llmload.load.worker import InProcess
from pytest_llmload.options import OPTIONS_BY_DEST, Settings, parse_load_cluster, parse_load_workers
from pytest_llmload.server.placement import Placement
from pytest_llmload.session import LoadSession


def test_auto_workers_are_the_clients_cores() -> None:
    assert auto_workers(1, pinned=True) == 1  # this machine with vLLM on the CPU: in-process, as before
    assert auto_workers(2, pinned=False) == 1  # unpinned, one core is left to the server and the rest
    assert auto_workers(4, pinned=True) == 4 and auto_workers(64, pinned=True) == 8


def test_the_session_deals_workers_to_the_clients_cores(tmp_path: Path) -> None:
    session = LoadSession(Settings(base_url="http://127.0.0.1:9", report_dir=str(tmp_path)), rootdir=tmp_path).a
    session.placement = Placement((4, 5, 6), (0, 1, 2, 3), policy="given")
    assert session._load_workers() == {"workers": 3, "worker_cpus": (4, 5, 6)}  # noqa: SLF001
    session.placement = None
    assert session._load_workers()["worker_cpus"] == ()  # noqa: SLF001 - not pinned: neither are the workers
    session.settings = Settings(load_workers=4, load_cluster="local")
    assert session._load_workers()["workers"] == 4  # noqa: SLF001
    session.settings = Settings(load_cluster="ray", ray_address="ray://head:10001")
    assert session._load_workers() == {"workers": None, "cluster": "ray", "ray_address": "ray://head:10001"}  # noqa: SLF001
    assert isinstance(make_backend(1), InProcess) and isinstance(make_backend(3, (1,)), ProcessBackend)


def test_the_options_parse_and_name_what_is_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse
    import importlib.util

    assert parse_load_workers("auto") == "auto" and parse_load_workers(" 4 ") == 4
    for bad in ("0", "many", "300"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_load_workers(bad)
    assert parse_load_cluster("LOCAL") == "local"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(argparse.ArgumentTypeError, match=r"pip install 'pytest-llmload\[ray\]'"):
        parse_load_cluster("ray")
    assert OPTIONS_BY_DEST["llm_ray_address"].env == "RAY_ADDRESS"
    env = {"RAY_ADDRESS": "10.0.0.1:6379"}
    settings = Settings.from_values(lambda dest: None, lambda ini: None, env)
    assert settings.ray_address == "10.0.0.1:6379" and settings.load_workers == "auto"
