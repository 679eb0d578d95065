"""GpuTelemetry with a scripted reader: exact peaks, means, energy and J/token; the no-GPU path."""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_llmload.results import CellResult, CellSpec, RequestRecord
from pytest_llmload.observe.gpu import (
    GpuTelemetry,
    NvmlReader,
    Sample,
    indices_from_cuda_visible_devices,
    output_tokens,
)

GB = 10**9
SPEC = CellSpec(users=2, prompt_tokens=31)


class ScriptedReader:
    """Returns the next scripted Sample of each GPU on every call; raises where the script says so."""

    def __init__(self, script: Mapping[int, Sequence[Sample | Exception]], names: list[str] | None = None) -> None:
        self.script = {i: iter(s) for i, s in script.items()}
        self._names = names or [f"Fake GPU {i}" for i in range(len(script))]
        self.closed = False

    def device_count(self) -> int:
        return len(self._names)

    def names(self) -> list[str]:
        return list(self._names)

    def sample(self, index: int) -> Sample:
        item = next(self.script[index])
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


class ConstantReader(ScriptedReader):
    """The same sample forever, for runs of unknown length."""

    def __init__(self) -> None:
        super().__init__({0: []})

    def sample(self, index: int) -> Sample:
        return Sample(memory_used=GB, memory_total=16 * GB, util=50.0, power_w=100.0, energy_j=None)


def cell(*output_tokens: int | None) -> CellResult:
    records = tuple(
        RequestRecord(index=i, start=0.0, end=1.0, output_tokens=n, error=None if n else "timeout")
        for i, n in enumerate(output_tokens)
    )
    return CellResult(users=len(records), prompt_tokens=31, max_tokens=100, ok=True, records=records)


def clock(*times: float):
    it = iter(times)
    return lambda: next(it)


def run_scripted(tel: GpuTelemetry, ticks: int, result: CellResult) -> dict[str, Any]:
    """before_cell (first sample), `ticks` manual samples, after_cell (last sample)."""
    tel.before_cell(SPEC)
    for _ in range(ticks):
        tel.sample_once()
    out = tel.after_cell(result)
    assert out is not None
    return out


def test_exact_peaks_means_energy_and_joules_per_token():
    gpu0 = [Sample(1 * GB, 16 * GB, 10, 100, 1000), Sample(3 * GB, 16 * GB, 90, 200, 1100),
            Sample(2 * GB, 16 * GB, 50, 200, 1300), Sample(2 * GB, 16 * GB, 50, 100, 1450)]
    # GPU 1 has no energy counter (pre-Volta): energy is the trapezoid integral of its power.
    gpu1 = [Sample(4 * GB, 32 * GB, 0, 50, None), Sample(4 * GB, 32 * GB, 20, 50, None),
            Sample(5 * GB, 32 * GB, 100, 150, None), Sample(4 * GB, 32 * GB, 40, 150, None)]
    reader = ScriptedReader({0: gpu0, 1: gpu1}, names=["Tesla V100-SXM2-16GB", "Tesla V100-SXM2-32GB"])
    tel = GpuTelemetry(interval_s=3600, reader=reader, clock=clock(0.0, 1.0, 2.0, 3.0))
    out = run_scripted(tel, 2, cell(100, 50, 25, None))  # the failed request with usage counts, None does not

    g0, g1 = out["gpus"]
    assert (g0["name"], g0["samples"], g0["memory_total_bytes"]) == ("Tesla V100-SXM2-16GB", 4, 16 * GB)
    assert g0["memory_used_peak_bytes"] == 3 * GB and g0["memory_used_mean_bytes"] == 2 * GB
    assert g0["util_mean_pct"] == 50 and g0["util_peak_pct"] == 90
    assert g0["power_mean_w"] == 150
    assert (g0["energy_j"], g0["energy_source"]) == (450, "counter")
    assert g0["energy_power_integral_j"] == 150 + 200 + 150
    assert (g1["energy_j"], g1["energy_source"]) == (50 + 100 + 150, "power_integral")
    assert g1["memory_used_peak_bytes"] == 5 * GB and g1["util_mean_pct"] == 40

    total = out["total"]
    assert total["memory_used_peak_bytes"] == 7 * GB  # peak of the per-tick sum (5 + 2), not 3 + 5
    assert total["memory_used_mean_bytes"] == 2 * GB + 4.25 * GB
    assert total["memory_total_bytes"] == 48 * GB
    assert total["util_mean_pct"] == 45 and total["util_peak_pct"] == 100
    assert total["power_mean_w"] == 150 + 100
    assert total["energy_j"] == 750 and total["output_tokens"] == 175
    assert total["j_per_output_token"] == pytest.approx(750 / 175)
    assert out["available"] is True and tel.timeline[0][0] == 0.0 and tel.timeline[-1][0] == 3.0


def test_a_failing_sample_is_counted_not_raised():
    s = Sample(GB, 2 * GB, 10, 10, None)
    reader = ScriptedReader({0: [s, RuntimeError("GPU has fallen off the bus"), s]})
    tel = GpuTelemetry(interval_s=3600, reader=reader, clock=clock(0, 1, 2))
    out = run_scripted(tel, 1, cell(10))
    gpu = out["gpus"][0]
    assert gpu["samples"] == 2 and gpu["sample_errors"] == 1 and "fallen off" in gpu["last_error"]
    assert gpu["energy_j"] == 20  # integral across the gap: (10 + 10) / 2 * 2 s


def test_no_tokens_means_no_joules_per_token():
    s = Sample(GB, 2 * GB, 10, 10, 5.0)
    tel = GpuTelemetry(interval_s=3600, reader=ScriptedReader({0: [s, s]}), clock=clock(0, 1))
    assert run_scripted(tel, 0, cell(None))["total"]["j_per_output_token"] is None


def test_timeline_is_decimated_but_peaks_are_exact():
    spike = 9 * GB
    samples = [Sample(spike if i == 7 else GB, 16 * GB, 1, 1, None) for i in range(40)]
    tel = GpuTelemetry(interval_s=3600, reader=ScriptedReader({0: samples}),
                       clock=functools.partial(next, map(float, itertools.count())), max_timeline=8)
    out = run_scripted(tel, 38, cell(1))
    assert len(tel.timeline) < 8
    assert out["gpus"][0]["samples"] == 40 and out["gpus"][0]["memory_used_peak_bytes"] == spike
    times = [t for t, _ in tel.timeline]
    assert times == sorted(times) and len({b - a for a, b in zip(times, times[1:])}) == 1  # evenly spaced


def test_the_thread_samples_and_stops():
    tel = GpuTelemetry(interval_s=0.01, reader=ConstantReader())
    tel.before_cell(SPEC)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and tel._state.gpus[0].n < 5:  # bounded wait for 5 samples
        time.sleep(0.01)
    out = tel.after_cell(cell(10))
    assert out["gpus"][0]["samples"] >= 5
    assert out["gpus"][0]["energy_source"] == "power_integral" and out["gpus"][0]["energy_j"] > 0
    assert not [t for t in threading.enumerate() if t.name == "llmload-gpu-telemetry"]
    tel.close()
    tel.close()


def test_close_stops_a_cell_that_never_ended():
    reader = ConstantReader()
    tel = GpuTelemetry(interval_s=0.01, reader=reader)
    tel.before_cell(SPEC)
    tel.close()
    assert reader.closed
    assert not [t for t in threading.enumerate() if t.name == "llmload-gpu-telemetry"]


def test_selected_indices_only():
    s = Sample(GB, 2 * GB, 1, 1, None)
    reader = ScriptedReader({0: [], 1: [s, s], 2: []}, names=["A", "B", "C"])
    tel = GpuTelemetry([1], interval_s=3600, reader=reader, clock=clock(0, 1))
    out = run_scripted(tel, 0, cell(1))
    assert [g["index"] for g in out["gpus"]] == [1] and tel.names == ["B"]


def test_an_index_out_of_range_makes_telemetry_unavailable():
    tel = GpuTelemetry([3], reader=ScriptedReader({0: []}))
    assert not tel.available and "out of range" in str(tel.unavailable_reason)


def test_unavailable_without_a_driver_is_reported_once():
    try:
        NvmlReader().close()
    except Exception:
        pass
    else:
        pytest.skip("this machine has an NVIDIA driver")
    tel = GpuTelemetry()  # the real NVML reader: no driver here
    assert tel.available is False and "NVML" in str(tel.unavailable_reason)
    tel.before_cell(SPEC)
    first = tel.after_cell(cell(10))
    assert first == {"available": False, "reason": tel.unavailable_reason}
    tel.before_cell(SPEC)
    assert tel.after_cell(cell(10)) is None
    tel.close()


def test_output_tokens_counts_failed_requests_that_reported_usage():
    assert output_tokens(cell(100, None, 7)) == 107


@pytest.mark.parametrize("value, expected", [
    (None, None), ("", None), ("0", [0]), ("0,2", [0, 2]), (" 1 , 3 ", [1, 3]),
    ("1,-1,2", [1]), ("GPU-8d5e", ["GPU-8d5e"]),
])
def test_cuda_visible_devices(value, expected):
    assert indices_from_cuda_visible_devices(value) == expected


def test_interval_must_be_positive():
    with pytest.raises(ValueError, match="interval_s"):
        GpuTelemetry(interval_s=0, reader=ConstantReader())


def test_the_device_check_script_says_no_gpu_clearly():
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_telemetry_check.py"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # hide any GPU, so this is the no-GPU path everywhere
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "no GPU" in proc.stderr
