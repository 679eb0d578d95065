"""How busy the server's processes were during a cell, and whether the client shared their cores.

`ProcessCpuObserver` is a cell observer (name "processes"): it reads each server process's CPU time
(/proc/PID/stat, user + system) before and after the cell and reports the share of a core each used,
with the CPUs it may run on. When a busy server process (more than half a core: the API server under
load, the engine core, the compute worker) may run on a CPU the measuring client may run on, the cell
carries a warning: on a GPU host nothing is pinned by default, and this is how a user learns that the
client and the API server competed. The self-checks of the client (`load/selfcheck.py`) decide
whether that competition actually disturbed the measurement.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..results import CellResult, CellSpec
from ..server.placement import format_cpu_list, observe_affinity

BUSY_SHARE = 0.5  # of one core: above this a server process is "busy"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15 of stat)


class ProcessCpuObserver:
    """Cell observer "processes": CPU share of each server process and the client/server core overlap."""

    name = "processes"

    def __init__(self, server_pids: Callable[[], Sequence[int]], client_cpus: Callable[[], Sequence[int]]) -> None:
        self._pids = server_pids
        self._client_cpus = client_cpus
        self._before: dict[int, float] = {}
        self._t0 = 0.0

    def before_cell(self, spec: CellSpec) -> None:
        self._t0 = time.perf_counter()
        self._before = {pid: t for pid in self._pids() if (t := cpu_seconds(pid)) is not None}

    def after_cell(self, result: CellResult) -> dict[str, Any] | None:
        wall = time.perf_counter() - self._t0
        if not self._before or wall <= 0:
            return None
        client = set(self._client_cpus())
        rows, warnings = [], []
        for pid, before in self._before.items():
            after, seen = cpu_seconds(pid), observe_affinity(pid)
            if after is None or seen is None:
                continue
            share = (after - before) / wall
            rows.append({"pid": pid, "name": seen.name, "cpu_share": round(share, 3),
                         "cpus": format_cpu_list(seen.cpus)})
            overlap = client & set(seen.cpus)
            if share > BUSY_SHARE and overlap:
                warnings.append(f"server process {pid} ({seen.name}) used {share:.0%} of a core and may run on "
                                f"the client's CPU(s) {format_cpu_list(overlap)}: pin the client away from it "
                                "(--llm-client-cpus) if cells come out invalid")
        return {"processes": rows, "client_cpus": format_cpu_list(client), "warnings": warnings}

    def close(self) -> None:
        """Nothing to release."""
