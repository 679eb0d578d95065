"""Who runs where: the measuring client and the server's processes on the machine's cores.

On a CPU server, vLLM's worker binds its OpenMP compute threads to cores and runs them hot; a client
thread that lands on one of those cores stalls for hundreds of milliseconds inside a socket write,
and then measures itself. The engine core and the API server are busy too (about half a core each
under load). So when the session launches vLLM on the CPU it places both sides deliberately:

- the client gets `client_cpus` (default: the last core the process may use; `--llm-client-cpus`);
- the server's whole process tree gets the other cores (`sched_setaffinity` in the launched process,
  inherited by every child), and vLLM's OpenMP threads are bound inside them
  (`VLLM_CPU_OMP_THREADS_BIND`): to its only core when it has one (the engine core and the API server
  then share it; on 2 cores this was measured against the alternatives, see
  benchmarks/results/placement.md), else to all but one, which is left to the engine core and the API
  server, as vLLM's own automatic binding reserves one;
- every thread of the measuring process is moved to `client_cpus` (threads created later inherit it),
  and the original affinity is restored when the session ends.

Then it checks: `observe_affinity` reads the allowed CPUs of every process of the server tree and of
every thread of ours from /proc, and `Placement.problems` says what is not where it was put. On a GPU
server nothing is pinned unless `--llm-client-cpus` is given; the placement is still recorded, and a
client sharing cores with a busy API server is reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def allowed_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on (its affinity), sorted."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """'0,2-3' -> (0, 2, 3); ValueError naming the bad part."""
    cpus: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{part!r} is not a CPU number or range such as 2 or 4-7")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"{part!r}: the range runs backwards")
        cpus.update(range(first, last + 1))
    if not cpus:
        raise ValueError("no CPU given")
    return tuple(sorted(cpus))


def format_cpu_list(cpus: Iterable[int]) -> str:
    """(0, 2, 3) -> '0,2-3'."""
    ids = sorted(set(cpus))
    parts: list[str] = []
    for cpu in ids:
        if parts and parts[-1].split("-")[-1] == str(cpu - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


@dataclass(frozen=True)
class Placement:
    """Where the client and a launched server run. Empty `server_cpus`: the server is not pinned."""

    client_cpus: tuple[int, ...]
    server_cpus: tuple[int, ...] = ()
    omp_cpus: tuple[int, ...] = ()  # VLLM_CPU_OMP_THREADS_BIND; () leaves vLLM's own choice
    policy: str = "none"  # "isolated" (ours), "given" (--llm-client-cpus), "shared" (cannot isolate), "none"
    note: str = ""
    server_nice: int = 0  # added to the server tree's niceness, so that the client wins a core they share

    def server_env(self) -> dict[str, str]:
        """What the launched server's environment needs for this placement."""
        return {"VLLM_CPU_OMP_THREADS_BIND": format_cpu_list(self.omp_cpus)} if self.omp_cpus else {}

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "client_cpus": format_cpu_list(self.client_cpus),
                "server_cpus": format_cpu_list(self.server_cpus) if self.server_cpus else "all",
                "omp_threads_bind": format_cpu_list(self.omp_cpus) if self.omp_cpus else "vLLM's choice",
                "server_nice": self.server_nice, "note": self.note}


def plan_cpu_placement(allowed: Sequence[int], client: Sequence[int] | None = None) -> Placement:
    """The placement for vLLM on the CPU with these cores; `client` is --llm-client-cpus."""
    cores = tuple(sorted(set(allowed)))
    if client is not None:
        outside = sorted(set(client) - set(cores))
        if outside:
            raise ValueError(f"CPU(s) {format_cpu_list(outside)} are not available to this process "
                             f"(it may use {format_cpu_list(cores)})")
        rest = tuple(c for c in cores if c not in client)
        if not rest:
            return Placement(tuple(client), policy="shared",
                             note="--llm-client-cpus leaves no core for the server: client and server share")
        return Placement(tuple(client), rest, _omp_cores(rest), "given", "--llm-client-cpus")
    if len(cores) < 2:
        return Placement(cores, policy="shared",
                         note="one core: the client and the server cannot be separated; cells that the "
                              "sharing disturbs are marked invalid")
    client_cores, rest = cores[-1:], cores[:-1]
    return Placement(client_cores, rest, _omp_cores(rest), "isolated",
                     "the client alone on its core; the server's whole tree on the others")


def plan_pinned_client(allowed: Sequence[int], client: Sequence[int]) -> Placement:
    """--llm-client-cpus on a GPU host or for an attached server: the client there, a launched server's
    processes on the other cores (its GPU work needs no CPU binding of ours)."""
    placement = plan_cpu_placement(allowed, client)
    return Placement(placement.client_cpus, placement.server_cpus, (), placement.policy, placement.note)


def _omp_cores(server: Sequence[int]) -> tuple[int, ...]:
    """Compute cores: the server's only core, else all but the first (left to the engine core and API server)."""
    return tuple(server) if len(server) == 1 else tuple(server[1:])


def set_own_affinity(cpus: Iterable[int]) -> None:
    """Move every thread of this process to `cpus` (threads started later inherit the caller's)."""
    wanted = set(cpus)
    for tid in _thread_ids(os.getpid()):
        try:
            os.sched_setaffinity(tid, wanted)
        except OSError:
            continue  # a thread that ended meanwhile


def _thread_ids(pid: int) -> list[int]:
    try:
        return [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if t.name.isdigit()]
    except OSError:
        return [pid]


@dataclass(frozen=True)
class Observed:
    """One process as /proc describes it: its name, the CPUs its threads may use, the CPU it last ran on."""

    pid: int
    name: str
    cpus: tuple[int, ...]  # union over its threads
    threads: int
    last_cpu: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "name": self.name, "cpus": format_cpu_list(self.cpus), "threads": self.threads,
                "last_cpu": self.last_cpu}


def observe_affinity(pid: int) -> Observed | None:
    """Where a process's threads may run (None when it is gone)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    cpus: set[int] = set()
    tids = _thread_ids(pid)
    for tid in tids:
        cpus.update(_allowed_list(pid, tid))
    last = stat.rsplit(")", 1)[-1].split()
    return Observed(pid, name, tuple(sorted(cpus)), len(tids), int(last[36]) if len(last) > 36 else None)


def _allowed_list(pid: int, tid: int) -> tuple[int, ...]:
    try:
        for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return parse_cpu_list(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return ()


@dataclass
class PlacementReport:
    """The plan and what /proc showed of it; `problems` are the places where the two differ."""

    plan: Placement
    client: Observed | None = None
    server: list[Observed] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.plan.to_dict(), "client": None if self.client is None else self.client.to_dict(),
                "server_processes": [p.to_dict() for p in self.server], "problems": list(self.problems)}


def check_placement(plan: Placement, server_pids: Sequence[int]) -> PlacementReport:
    """Read where our threads and the server's processes may run, and compare with the plan."""
    report = PlacementReport(plan, observe_affinity(os.getpid()),
                             [o for o in (observe_affinity(p) for p in server_pids) if o is not None])
    if plan.policy in ("isolated", "given") and report.client is not None:
        if set(report.client.cpus) - set(plan.client_cpus):
            report.problems.append(f"a thread of the client may run on {format_cpu_list(report.client.cpus)}, "
                                   f"not only {format_cpu_list(plan.client_cpus)}")
        for proc in report.server:
            shared = set(proc.cpus) & set(plan.client_cpus)
            if shared:
                report.problems.append(f"server process {proc.pid} ({proc.name}) may run on the client's "
                                       f"CPU(s) {format_cpu_list(shared)}")
    return report
