"""What of the GPU path can be checked on a GPU machine without vLLM (there is none on the lent machine):

- the environment a report records: GPU names and memory, driver, CUDA (NVML);
- the physical limit: the bandwidth bound for the study's presets on the GPUs NVML names;
- placement on a many-core host: the plan with and without `--llm-client-cpus`, this process pinned to
  the client's cores, and /proc read back;
- a server-like child process pinned off the client's cores, as a launched server would be.

    python benchmarks/device_check.py --json out.json     # about a second; exit 0 when every check holds

(`benchmarks/gpu_telemetry_check.py` checks the NVML telemetry itself under a real GPU load.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_llmload.observe.environment import gpu_environment  # noqa: E402
from pytest_llmload.observe.physical import PhysicalLimitObserver, facts_from_preset  # noqa: E402
from pytest_llmload.results import CellResult  # noqa: E402
from pytest_llmload.server.placement import (  # noqa: E402
    allowed_cpus,
    check_placement,
    plan_cpu_placement,
    plan_pinned_client,
    set_own_affinity,
)
from pytest_llmload.server.presets import PRESETS  # noqa: E402
from pytest_llmload.server.process import child_setup  # noqa: E402


def check(results: list[dict[str, Any]], name: str, ok: bool, detail: Any) -> None:
    results.append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {json.dumps(detail, default=str)[:400]}", flush=True)


def environment_checks(results: list[dict[str, Any]]) -> list[str]:
    env = gpu_environment()
    names = [g.get("name") for g in env.get("gpus", [])]
    check(results, "NVML names the GPUs, driver and CUDA", bool(names) and env["driver_version"] and env["cuda_version"],
          env)
    return [str(n) for n in names if n]


def bound_checks(results: list[dict[str, Any]], names: list[str]) -> None:
    cell = CellResult(users=1, prompt_tokens=31, max_tokens=100, ok=True)
    for preset in ("mistral-7b", "mixtral-8x7b-awq", "llama-3-70b-awq"):
        facts = facts_from_preset(PRESETS[preset])
        observer = PhysicalLimitObserver(facts, tensor_parallel=1)  # GPU names read through NVML
        section = observer.after_cell(cell) or {}
        check(results, f"bandwidth bound for {preset} on {observer.gpu_names}",
              section.get("available") is True and section.get("tokens_per_s", 0) > 0,
              {k: section.get(k) for k in ("available", "reason", "tokens_per_s", "bandwidth_bytes_per_s")})


def placement_checks(results: list[dict[str, Any]]) -> None:
    cores = allowed_cpus()
    plan = plan_cpu_placement(cores)
    check(results, f"CPU plan on {len(cores)} cores", plan.policy == "isolated" and len(plan.client_cpus) == 1,
          plan.to_dict())
    gpu = plan_pinned_client(cores, cores[-4:])
    check(results, "GPU host with --llm-client-cpus (last 4 cores)", gpu.server_cpus == cores[:-4] and not gpu.omp_cpus,
          gpu.to_dict())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"], preexec_fn=child_setup(gpu.server_cpus))
    try:
        set_own_affinity(gpu.client_cpus)
        time.sleep(0.1)
        report = check_placement(gpu, [child.pid])
        check(results, "client pinned and a launched child kept off its cores", not report.problems, report.to_dict())
    finally:
        set_own_affinity(cores)
        child.kill()
        child.wait(5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results: list[dict[str, Any]] = []
    names = environment_checks(results)
    if names:
        bound_checks(results, names)
    placement_checks(results)
    if args.json:
        args.json.write_text(json.dumps({"host_cores": os.cpu_count(), "results": results}, indent=1, default=str))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
