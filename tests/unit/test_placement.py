"""Placement of the client and a launched server: the plan, pinning this process, reading it back."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from pytest_llmload.server.placement import (
    Placement,
    allowed_cpus,
    check_placement,
    format_cpu_list,
    observe_affinity,
    parse_cpu_list,
    plan_cpu_placement,
    plan_pinned_client,
    set_own_affinity,
)
from pytest_llmload.server.process import child_setup


@pytest.mark.parametrize(("text", "cpus"), [("3", (3,)), ("0,2-3", (0, 2, 3)), (" 1 , 1 ", (1,)), ("4-4", (4,))])
def test_cpu_lists_parse_and_format(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-", "-2", "1;2"])
def test_bad_cpu_lists_name_the_bad_part(text: str) -> None:
    with pytest.raises(ValueError):
        parse_cpu_list(text)


def test_two_cores_client_alone_server_tree_on_the_other() -> None:
    plan = plan_cpu_placement((0, 1))
    assert (plan.client_cpus, plan.server_cpus, plan.omp_cpus, plan.policy) == ((1,), (0,), (0,), "isolated")
    assert plan.server_env() == {"VLLM_CPU_OMP_THREADS_BIND": "0"}


def test_many_cores_leave_one_server_core_to_the_engine_core_and_api_server() -> None:
    plan = plan_cpu_placement(tuple(range(16)))
    assert plan.client_cpus == (15,) and plan.server_cpus == tuple(range(15))
    assert plan.omp_cpus == tuple(range(1, 15))
    assert plan.server_env() == {"VLLM_CPU_OMP_THREADS_BIND": "1-14"}


def test_one_core_cannot_be_isolated_and_says_so() -> None:
    plan = plan_cpu_placement((0,))
    assert plan.policy == "shared" and not plan.server_cpus and "cannot be separated" in plan.note


def test_given_client_cpus() -> None:
    plan = plan_cpu_placement((0, 1, 2, 3), client=(0, 1))
    assert (plan.client_cpus, plan.server_cpus, plan.omp_cpus, plan.policy) == ((0, 1), (2, 3), (3,), "given")
    with pytest.raises(ValueError, match="CPU.s. 7 are not available"):
        plan_cpu_placement((0, 1), client=(7,))
    assert plan_cpu_placement((0, 1), client=(0, 1)).policy == "shared"
    gpu = plan_pinned_client((0, 1, 2, 3), (3,))
    assert gpu.server_cpus == (0, 1, 2) and gpu.omp_cpus == () and gpu.server_env() == {}


needs_two = pytest.mark.skipif(len(allowed_cpus()) < 2, reason="needs two CPUs to place anything")


@needs_two
def test_pinning_moves_every_thread_and_is_read_back() -> None:
    original = allowed_cpus()
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, args=(30,), daemon=True)  # started before the pinning
    worker.start()
    try:
        set_own_affinity((original[-1],))
        seen = observe_affinity(os.getpid())
        assert seen is not None and seen.cpus == (original[-1],) and seen.threads >= 2
        plan = Placement((original[-1],), original[:-1], policy="isolated")
        assert check_placement(plan, []).problems == []
        wrong = Placement((original[0],), original[1:], policy="isolated")
        assert "a thread of the client may run on" in check_placement(wrong, []).problems[0]
    finally:
        set_own_affinity(original)
        stop.set()
        worker.join(5)
    assert allowed_cpus() == original


@needs_two
def test_a_launched_child_and_its_children_get_the_server_cpus() -> None:
    """`child_setup` pins the launched process before exec; its own children inherit the affinity."""
    cpu = allowed_cpus()[0]
    script = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(20)']); print(c.pid, flush=True); time.sleep(20)"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            preexec_fn=child_setup((cpu,)), start_new_session=True)
    try:
        assert proc.stdout is not None
        grandchild = int(proc.stdout.readline())
        report = check_placement(Placement((allowed_cpus()[-1],), (cpu,), policy="isolated"), [proc.pid, grandchild])
        assert [p.cpus for p in report.server] == [(cpu,), (cpu,)]
        assert not [p for p in report.problems if p.startswith("server process")]
        shared = check_placement(Placement((cpu,), (), policy="isolated"), [proc.pid])
        assert "may run on the client's CPU(s)" in shared.problems[-1]
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        deadline = time.monotonic() + 5
        while observe_affinity(grandchild) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
