#!/usr/bin/env bash
# One run on a lent GPU machine (16 cores, one H200, no vLLM, Python with torch/httpx/uvloop): the GPU path
# without a server (NVML environment, bandwidth bound, placement on many cores), NVML telemetry under load,
# and the load workers' scaling curve on many cores. Results land in $OUT (or ./device-out).
set -u
OUT=${OUT:-device-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=.
{ date -u; nproc; uname -r; python3 --version; nvidia-smi -L; } 2>&1 | tee "$OUT/machine.txt"
timeout 60 python3 benchmarks/device_check.py --json "$OUT/device_check.json" 2>&1 | tee "$OUT/device_check.log"
timeout 90 python3 benchmarks/gpu_telemetry_check.py --seconds 8 --json "$OUT/gpu_telemetry.json" 2>&1 | tee "$OUT/gpu_telemetry.log"
timeout 300 python3 benchmarks/bench_workers.py --server-cpus 0-7 --client-cpus 8-15 --workers 1,2,4,8 \
  --budget-s 230 --json "$OUT/workers-16core.json" --md "$OUT/workers-16core.md" 2>&1 | tail -40
