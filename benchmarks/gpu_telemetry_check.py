"""Check GpuTelemetry against a real GPU workload (needs PyTorch with CUDA and nvidia-ml-py; no vLLM).

    python benchmarks/gpu_telemetry_check.py [--seconds 10] [--json out.json]

Two phases on GPU 0 (the first of CUDA_VISIBLE_DEVICES), each sampled by GpuTelemetry as one cell:
  idle - CUDA initialised, nothing running (2 s);
  work - `--alloc-gib` GiB held by torch and 8192x8192 fp16 matmuls in a loop for `--seconds`.
Checks, each printed with its numbers:
  - peak memory of `work` exceeds the idle peak by at least 90 % of what torch reserved;
  - utilisation of `work`: mean >= 80 %, peak >= 95 %;
  - mean power of `work` > 1.2 x idle mean power;
  - energy of `work` > 0, and within 25 % of mean power x duration;
  - J per output token = energy / the fake token count given to the cell.
Exit 0 when all hold, 1 when one fails, 2 when there is no GPU (a clear message says why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pytest_llmload.results import CellResult, CellSpec, RequestRecord  # noqa: E402
from pytest_llmload.observe.gpu import GpuTelemetry, indices_from_cuda_visible_devices  # noqa: E402

FAKE_TOKENS = 1000
NO_GPU = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the workload. Default: %(default)r")
    ap.add_argument("--alloc-gib", type=float, default=2.0, help="memory torch holds. Default: %(default)r")
    ap.add_argument("--interval", type=float, default=0.1, help="sampling interval. Default: %(default)r")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    return ap.parse_args(argv)


def open_gpu() -> tuple[Any, str | None]:
    """(torch, None) when CUDA works, else (None, why not)."""
    try:
        import torch
    except ImportError as exc:
        return None, f"PyTorch is not installed ({exc})"
    if not torch.cuda.is_available():
        return None, "torch.cuda.is_available() is False (no NVIDIA GPU or driver)"
    return torch, None


def fake_cell(seconds: float) -> CellResult:
    """A cell whose records report FAKE_TOKENS output tokens, for the J/token figure."""
    record = RequestRecord(index=0, start=0.0, end=seconds, output_tokens=FAKE_TOKENS)
    return CellResult(users=1, prompt_tokens=1, max_tokens=FAKE_TOKENS, ok=True, records=(record,))


def measure(tel: GpuTelemetry, seconds: float, work: Any = None) -> tuple[dict[str, Any], float]:
    """Sample one phase: `work()` repeatedly (or sleep) for `seconds`; returns (GPU 0 summary, duration)."""
    tel.before_cell(CellSpec(users=1, prompt_tokens=1, max_tokens=FAKE_TOKENS))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if work is None:
            time.sleep(0.05)
        else:
            work()
    duration = time.perf_counter() - t0
    out = tel.after_cell(fake_cell(duration))
    assert out is not None and out["available"], out
    return out, duration


def matmul_loop(torch: Any, device: Any) -> Any:
    a = torch.randn(8192, 8192, device=device, dtype=torch.float16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.float16)

    def work() -> None:
        for _ in range(20):
            torch.matmul(a, b)
        torch.cuda.synchronize(device)

    return work


def checks(idle: dict[str, Any], work: dict[str, Any], duration: float, reserved: int) -> list[tuple[bool, str]]:
    i, w = idle["gpus"][0], work["gpus"][0]
    grown = w["memory_used_peak_bytes"] - i["memory_used_peak_bytes"]
    expected_energy = (w["power_mean_w"] or 0) * duration
    energy = w["energy_j"] or 0.0
    return [
        (grown >= 0.9 * reserved,
         f"peak memory grew by {grown / 2**30:.2f} GiB; torch reserved {reserved / 2**30:.2f} GiB"),
        ((w["util_mean_pct"] or 0) >= 80, f"utilisation mean {w['util_mean_pct']} % (>= 80)"),
        ((w["util_peak_pct"] or 0) >= 95, f"utilisation peak {w['util_peak_pct']} % (>= 95)"),
        ((w["power_mean_w"] or 0) > 1.2 * (i["power_mean_w"] or 0),
         f"power mean {w['power_mean_w']} W under load vs {i['power_mean_w']} W idle (> 1.2x)"),
        (energy > 0, f"energy {energy:.1f} J from {w['energy_source']}"),
        (abs(energy - expected_energy) <= 0.25 * expected_energy,
         f"energy {energy:.1f} J vs mean power x duration {expected_energy:.1f} J (within 25 %)"),
        (work["total"]["j_per_output_token"] is not None,
         f"J per output token {work['total']['j_per_output_token']} for {FAKE_TOKENS} fake tokens"),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch, why = open_gpu()
    if torch is None:
        print(f"no GPU: {why}; nothing to check.", file=sys.stderr)
        return NO_GPU
    visible = indices_from_cuda_visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"))
    tel = GpuTelemetry([visible[0] if visible else 0], interval_s=args.interval)
    if not tel.available:
        print(f"no GPU: {tel.unavailable_reason}", file=sys.stderr)
        return NO_GPU
    try:
        return run_checks(torch, tel, args)
    finally:
        tel.close()


def run_checks(torch: Any, tel: GpuTelemetry, args: argparse.Namespace) -> int:
    device = torch.device("cuda", 0)
    torch.zeros(1, device=device)  # create the CUDA context before the idle phase, so it is not "work"
    idle, _ = measure(tel, 2.0)
    hold = torch.empty(int(args.alloc_gib * 2**30), dtype=torch.uint8, device=device)
    work, duration = measure(tel, args.seconds, matmul_loop(torch, device))
    reserved = torch.cuda.memory_reserved(device)
    del hold
    results = checks(idle, work, duration, reserved)
    for ok, line in results:
        print(f"{'ok  ' if ok else 'FAIL'} {line}")
    print(f"GPU: {work['gpus'][0]['name']}; {work['gpus'][0]['samples']} samples in {duration:.1f} s")
    if args.json:
        args.json.write_text(json.dumps({"idle": idle, "work": work, "checks": results}, indent=2))
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
