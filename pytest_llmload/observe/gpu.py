"""What the GPUs did during a cell: memory, utilisation, power and energy, sampled through NVML.

`GpuTelemetry` is a cell observer (name "gpu"). `before_cell` takes a first sample and starts a
background thread that samples the server's GPUs every `interval_s`; `after_cell` stops the thread,
takes a last sample and returns, per GPU and in total:

- memory used: peak and mean (bytes), as NVML sees it (the whole device, all processes, including
  vLLM's pre-allocated KV cache, so it is mostly flat under vLLM and grows with other tenants);
- utilisation: mean and peak percent. NVML's "GPU utilisation" is the share of the last sample
  period (1/6 s to 1 s, driver dependent) in which *any* kernel ran, not how busy the SMs were;
- power: mean W;
- energy: J, from the driver's energy counter (`nvmlDeviceGetTotalEnergyConsumption`, Volta and
  newer) when it is supported, else the trapezoidal integral of the power samples over time.
  The integral is always reported too (`energy_power_integral_j`), so the two can be compared;
- J per output token: the cell's total energy / the output tokens the server reported in `usage`
  (every record that has a count, failed ones included, because those tokens cost energy too).

No GPU, no driver or no nvidia-ml-py: the observer reports itself unavailable once — the first
`after_cell` returns `{"available": False, "reason": ...}`, later ones return None — and never raises.
Sampling errors of a running GPU are counted (`sample_errors`), not raised.

Memory stays bounded however long a cell runs: peaks, means and energy are running accumulators;
only the optional timeline keeps samples, and it is decimated (every other sample dropped and the
stride doubled) when it reaches `max_timeline` entries.

GPU indices are NVML indices. NVML numbers devices in PCI bus order; CUDA does so only with
`CUDA_DEVICE_ORDER=PCI_BUS_ID` (otherwise fastest first), so `indices_from_cuda_visible_devices`
is exact when that is set or all GPUs are alike. UUID entries (`GPU-...`) are resolved by `NvmlReader`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..results import CellResult, CellSpec

# A cell that outlives this is abandoned by the sampler thread, so a forgotten after_cell cannot
# leave a thread running forever.
MAX_SAMPLING_S = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one GPU. `energy_j` is the driver's cumulative counter, None where unsupported."""

    memory_used: int
    memory_total: int
    util: float | None
    power_w: float | None
    energy_j: float | None


class GpuReader(Protocol):
    """Where samples come from: NVML in production, a fake in tests."""

    def device_count(self) -> int:
        """Number of GPUs the reader can see."""

    def names(self) -> list[str]:
        """Product names of all GPUs, by index."""

    def sample(self, index: int) -> Sample:
        """Read GPU `index` now."""


class NvmlReader:
    """`GpuReader` over nvidia-ml-py. Raises ImportError or pynvml.NVMLError when there is no GPU/driver."""

    def __init__(self) -> None:
        import pynvml  # type: ignore[import-untyped]  # local: must import without nvidia-ml-py

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handles: dict[int, Any] = {}
        self._energy_ok: dict[int, bool] = {}

    def device_count(self) -> int:
        return int(self._nvml.nvmlDeviceGetCount())

    def names(self) -> list[str]:
        return [_text(self._nvml.nvmlDeviceGetName(self._handle(i))) for i in range(self.device_count())]

    def index_of_uuid(self, uuid: str) -> int:
        """NVML index of the GPU with this UUID (CUDA_VISIBLE_DEVICES may list UUIDs)."""
        return int(self._nvml.nvmlDeviceGetIndex(self._nvml.nvmlDeviceGetHandleByUUID(uuid)))

    def sample(self, index: int) -> Sample:
        nv, h = self._nvml, self._handle(index)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        return Sample(
            memory_used=int(mem.used),
            memory_total=int(mem.total),
            util=self._optional(lambda: float(nv.nvmlDeviceGetUtilizationRates(h).gpu)),
            power_w=self._optional(lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0),  # mW -> W
            energy_j=self._energy(index, h),
        )

    def close(self) -> None:
        """Release NVML."""
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass

    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def _energy(self, index: int, handle: Any) -> float | None:
        # Ask once per GPU: pre-Volta boards answer NOT_SUPPORTED on every call.
        if self._energy_ok.get(index) is False:
            return None
        value = self._optional(lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0)
        self._energy_ok[index] = value is not None
        return value

    def _optional(self, read: Callable[[], float]) -> float | None:
        """A reading some boards do not support (power on some vGPUs, energy before Volta)."""
        try:
            return read()
        except self._nvml.NVMLError:
            return None


def _text(value: str | bytes) -> str:
    # Old nvidia-ml-py versions return bytes.
    return value.decode() if isinstance(value, bytes) else value


def indices_from_cuda_visible_devices(value: str | None) -> list[int | str] | None:
    """The GPUs a `CUDA_VISIBLE_DEVICES` value selects: ints, or UUID strings; None when unset (all GPUs)."""
    if value is None or not value.strip():
        return None
    out: list[int | str] = []
    for part in (p.strip() for p in value.split(",")):
        if part.lstrip("-").isdigit() and int(part) < 0:
            break  # CUDA ignores everything from the first invalid index on
        if part:
            out.append(int(part) if part.isdigit() else part)
    return out


@dataclass
class _GpuAccumulator:
    """Running statistics of one GPU over one cell; constant memory."""

    n: int = 0
    mem_peak: int = 0
    mem_sum: float = 0.0
    memory_total: int = 0
    util_n: int = 0
    util_sum: float = 0.0
    util_peak: float = 0.0
    power_n: int = 0
    power_sum: float = 0.0
    power_integral_j: float = 0.0
    last_power: tuple[float, float] | None = None  # (time, W) of the previous power reading
    energy_first: float | None = None
    energy_last: float | None = None
    errors: int = 0
    last_error: str | None = None

    def add(self, t: float, s: Sample) -> None:
        self.n += 1
        self.mem_peak = max(self.mem_peak, s.memory_used)
        self.mem_sum += s.memory_used
        self.memory_total = s.memory_total
        if s.util is not None:
            self.util_n += 1
            self.util_sum += s.util
            self.util_peak = max(self.util_peak, s.util)
        if s.power_w is not None:
            self._add_power(t, s.power_w)
        if s.energy_j is not None:
            self.energy_first = s.energy_j if self.energy_first is None else self.energy_first
            self.energy_last = s.energy_j

    def _add_power(self, t: float, watts: float) -> None:
        self.power_n += 1
        self.power_sum += watts
        if self.last_power is not None:
            t0, w0 = self.last_power
            self.power_integral_j += (w0 + watts) / 2.0 * (t - t0)  # trapezoid
        self.last_power = (t, watts)

    def summary(self, index: int, name: str) -> dict[str, Any]:
        counter = None
        if self.energy_first is not None and self.energy_last is not None:
            counter = self.energy_last - self.energy_first
        use_counter = counter is not None and counter >= 0  # a driver reload resets the counter
        return {
            "index": index,
            "name": name,
            "samples": self.n,
            "memory_total_bytes": self.memory_total,
            "memory_used_peak_bytes": self.mem_peak,
            "memory_used_mean_bytes": self.mem_sum / self.n if self.n else None,
            "util_mean_pct": self.util_sum / self.util_n if self.util_n else None,
            "util_peak_pct": self.util_peak if self.util_n else None,
            "power_mean_w": self.power_sum / self.power_n if self.power_n else None,
            "energy_j": counter if use_counter else (self.power_integral_j if self.power_n > 1 else None),
            "energy_source": "counter" if use_counter else ("power_integral" if self.power_n > 1 else None),
            "energy_power_integral_j": self.power_integral_j if self.power_n > 1 else None,
            "sample_errors": self.errors,
            "last_error": self.last_error,
        }


@dataclass
class _CellState:
    """Everything sampled during the current cell."""

    gpus: dict[int, _GpuAccumulator]
    started: float | None = None  # time of the first sample; the timeline counts from it
    total_mem_peak: int = 0  # peak of the per-sample sum over GPUs (not the sum of peaks)
    timeline: list[tuple[float, tuple[Sample | None, ...]]] = field(default_factory=list)
    stride: int = 1
    ticks: int = 0


class GpuTelemetry:
    """Cell observer "gpu": samples NVML in a background thread during each cell (see module docstring)."""

    name = "gpu"

    def __init__(
        self,
        gpu_indices: Sequence[int | str] | None = None,
        *,
        interval_s: float = 0.1,
        reader: GpuReader | None = None,
        clock: Callable[[], float] = time.perf_counter,
        max_timeline: int = 2000,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        self.interval_s = interval_s
        self.max_timeline = max(2, max_timeline)
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state: _CellState | None = None
        self._last_timeline: list[tuple[float, tuple[Sample | None, ...]]] = []
        self._reported_unavailable = False
        self.available = False
        self.unavailable_reason: str | None = None
        self._reader: GpuReader | None = None
        self.indices: list[int] = []
        self.names: list[str] = []
        self._open(reader, gpu_indices)

    # -- set-up --------------------------------------------------------------------------------

    def _open(self, reader: GpuReader | None, wanted: Sequence[int | str] | None) -> None:
        """Connect to the reader and resolve the GPUs; any failure makes telemetry unavailable."""
        try:
            self._reader = reader if reader is not None else NvmlReader()
            count = self._reader.device_count()
            all_names = self._reader.names()
            self.indices = self._resolve(wanted, count)
        except Exception as exc:  # ImportError, NVMLError, a bad index: all mean "no telemetry"
            self._mark_unavailable(_reason(exc))
            return
        if not self.indices:
            self._mark_unavailable("no GPU found (NVML sees 0 devices)")
            return
        self.names = [all_names[i] for i in self.indices]
        self.available = True

    def _resolve(self, wanted: Sequence[int | str] | None, count: int) -> list[int]:
        if wanted is None:
            return list(range(count))
        out = []
        for w in wanted:
            if isinstance(w, str):
                lookup = getattr(self._reader, "index_of_uuid", None)
                if lookup is None:
                    raise ValueError(f"cannot resolve GPU UUID {w!r} with this reader")
                w = int(lookup(w))
            if not 0 <= w < count:
                raise ValueError(f"GPU index {w} out of range: NVML sees {count} device(s)")
            out.append(w)
        return out

    def _mark_unavailable(self, reason: str) -> None:
        self.available = False
        self.unavailable_reason = reason
        self._close_reader()

    # -- observer protocol ---------------------------------------------------------------------

    def before_cell(self, spec: CellSpec) -> None:
        """Take the first sample and start the sampler thread."""
        if not self.available:
            return
        self._stop_thread()  # a previous cell whose after_cell never came
        self._state = _CellState(gpus={i: _GpuAccumulator() for i in self.indices})
        self.sample_once()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="llmload-gpu-telemetry", daemon=True)
        self._thread.start()

    def after_cell(self, result: CellResult) -> dict[str, Any] | None:
        """Stop sampling, take a last sample and summarise; unavailable: a reason once, then None."""
        if not self.available:
            return self._unavailable_once()
        self._stop_thread()
        if self._state is None:
            return None
        self.sample_once()
        state, self._state = self._state, None
        self._last_timeline = state.timeline
        return self._summary(state, output_tokens(result))

    def close(self) -> None:
        """Stop the thread and release NVML; safe to call twice."""
        self._stop_thread()
        self._state = None
        self._close_reader()

    def __enter__(self) -> GpuTelemetry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def timeline(self) -> list[tuple[float, tuple[Sample | None, ...]]]:
        """(seconds since the cell's start, one Sample or None per GPU) of the last finished cell, decimated."""
        return list(self._last_timeline)

    # -- sampling ------------------------------------------------------------------------------

    def sample_once(self) -> None:
        """Read every GPU once and fold the readings into the current cell (the thread calls this)."""
        state, reader = self._state, self._reader
        if state is None or reader is None:
            return
        t = self._clock()
        readings = [self._read(reader, state.gpus[i], i) for i in self.indices]
        with self._lock:
            start = state.started = t if state.started is None else state.started
            for i, s in zip(self.indices, readings):
                if s is not None:
                    state.gpus[i].add(t, s)
            if all(s is not None for s in readings):
                state.total_mem_peak = max(state.total_mem_peak, sum(s.memory_used for s in readings if s))
            self._keep(state, t - start, tuple(readings))

    @staticmethod
    def _read(reader: GpuReader, acc: _GpuAccumulator, index: int) -> Sample | None:
        try:
            return reader.sample(index)
        except Exception as exc:  # a GPU falling off the bus must not kill the run
            acc.errors += 1
            acc.last_error = _reason(exc)
            return None

    def _keep(self, state: _CellState, t: float, readings: tuple[Sample | None, ...]) -> None:
        """Append to the timeline every `stride`-th tick; halve the timeline when it is full."""
        state.ticks += 1
        if (state.ticks - 1) % state.stride:
            return
        state.timeline.append((t, readings))
        if len(state.timeline) >= self.max_timeline:
            state.timeline = state.timeline[::2]
            state.stride *= 2

    def _run(self) -> None:
        deadline = time.monotonic() + MAX_SAMPLING_S
        # Event.wait returns True when stop is set; the deadline bounds a cell nobody ends.
        while not self._stop.wait(self.interval_s) and time.monotonic() < deadline:
            self.sample_once()

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 10 * self.interval_s))
            self._thread = None

    def _close_reader(self) -> None:
        close = getattr(self._reader, "close", None)
        self._reader = None
        if close is not None:
            try:
                close()
            except Exception:
                pass

    # -- results -------------------------------------------------------------------------------

    def _unavailable_once(self) -> dict[str, Any] | None:
        if self._reported_unavailable:
            return None
        self._reported_unavailable = True
        return {"available": False, "reason": self.unavailable_reason}

    def _summary(self, state: _CellState, tokens: int) -> dict[str, Any]:
        per_gpu = [state.gpus[i].summary(i, n) for i, n in zip(self.indices, self.names)]
        total = _total(per_gpu, state.total_mem_peak, tokens)
        return {"available": True, "interval_s": self.interval_s, "gpus": per_gpu, "total": total}


def _total(per_gpu: list[dict[str, Any]], mem_peak: int, tokens: int) -> dict[str, Any]:
    """Sums over GPUs (memory, power, energy) and means of means (utilisation)."""
    energies = [g["energy_j"] for g in per_gpu]
    energy = math.fsum(energies) if all(e is not None for e in energies) else None
    utils = [g["util_mean_pct"] for g in per_gpu if g["util_mean_pct"] is not None]
    powers = [g["power_mean_w"] for g in per_gpu]
    means = [g["memory_used_mean_bytes"] for g in per_gpu]
    return {
        "memory_used_peak_bytes": mem_peak,
        "memory_used_mean_bytes": math.fsum(means) if all(m is not None for m in means) else None,
        "memory_total_bytes": sum(g["memory_total_bytes"] for g in per_gpu),
        "util_mean_pct": math.fsum(utils) / len(utils) if utils else None,
        "util_peak_pct": max((g["util_peak_pct"] for g in per_gpu if g["util_peak_pct"] is not None), default=None),
        "power_mean_w": math.fsum(powers) if all(p is not None for p in powers) else None,
        "energy_j": energy,
        "output_tokens": tokens,
        "j_per_output_token": energy / tokens if energy is not None and tokens > 0 else None,
    }


def output_tokens(result: CellResult) -> int:
    """Output tokens of the cell as the server's `usage` reported them, failed requests included."""
    return sum(r.output_tokens for r in result.records if r.output_tokens is not None)


def _reason(exc: BaseException) -> str:
    """A sentence for the report: what failed and what it means."""
    kind = type(exc).__name__
    if isinstance(exc, ImportError):
        return f"nvidia-ml-py is not importable ({exc}); GPU telemetry disabled"
    if "NVML" in kind or "NVML" in str(exc):
        return f"NVML unavailable: {exc or kind} (no NVIDIA GPU or driver?); GPU telemetry disabled"
    return f"{kind}: {exc}"
