"""Load workers against the real vLLM (CPU build, tiny model), through the session as the plugin runs it:
the client placed on its core, two worker processes pinned there, their merged records checked against
vLLM's own counters (the /metrics cross-check), every worker gone at the end."""

from __future__ import annotations

import os
from pathlib import Path

from pytest_llmload.options import Settings
from pytest_llmload.session import LoadSession
from wire import gone


def test_two_load_workers_measure_the_real_server(tmp_path: Path, cache_dir: Path) -> None:
    settings = Settings(model="tiny", device="cpu", load_workers=2, max_tokens=16, report_dir=str(tmp_path),
                        cache_dir=str(cache_dir), request_timeout=300)
    with LoadSession(settings, rootdir=tmp_path) as session:
        session.warm_up()
        cell = session.run_cell(12, 31)
        backend = session.a.runner.backend
        pids = backend.pids  # type: ignore[attr-defined]
        client_cpus = list(session.a.placement.client_cpus) if session.a.placement else []
    assert cell.ok, cell.error
    assert [r.index for r in cell.records] == list(range(12)) and cell.errors == {}
    assert all(r.prompt_tokens == 31 and r.output_tokens == 16 and len(r.chunk_times) >= 1 for r in cell.records)
    client = cell.extra["client"]
    assert client["backend"] == "processes" and [w["requests"] for w in client["workers"]] == [6, 6]
    if len(os.sched_getaffinity(0)) >= 2:  # isolated: both workers pinned to the client's core
        assert all(w["cpus"] == client_cpus for w in client["workers"]), client["workers"]
    # vLLM's own counters agree with the merged records (the tokens generated), and no merged time is
    # shorter than the server's own histograms say (a request timed against the wrong start would be).
    metrics = cell.extra["server_metrics"]
    assert metrics["available"], metrics
    assert not [r for r in metrics["invalid"] if "tokens" in r or "is below the server's" in r], metrics["invalid"]
    assert gone(pids)
