"""GPU datasheets: the peak memory bandwidth of each GPU, keyed by the name NVML reports.

The physical limit (`physical.py`) adds the bandwidths of the server's GPUs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GB = 1e9  # datasheets quote decimal GB/s


@dataclass(frozen=True, slots=True)
class GpuBandwidth:
    """A table row: a regex over the upper-cased GPU name, its bandwidth and where the number comes from."""

    pattern: str
    gb_per_s: float
    source: str
    approximate: bool = False


# First match wins, so specific names precede their prefixes (V100S before V100, GH200 before H200).
# Patterns run on upper-cased names as NVML reports them ("NVIDIA A100-SXM4-40GB", "Tesla V100-SXM2-16GB")
# or as people write them ("A100 40GB", "H100 SXM").
GPU_BANDWIDTH: tuple[GpuBandwidth, ...] = (
    GpuBandwidth(r"\bV100S\b", 1134, "NVIDIA V100S datasheet"),
    GpuBandwidth(r"\bV100\b", 900, "NVIDIA V100 datasheet (PCIe and SXM2, 16 and 32 GB)"),
    GpuBandwidth(r"\bA100\b.*\b80\s?GB\b.*\bPCIE\b|\bA100\b.*\bPCIE\b.*\b80\s?GB\b", 1935,
                 "NVIDIA A100 datasheet (80GB PCIe)"),
    GpuBandwidth(r"\bA100\b.*\b80\s?GB\b", 2039, "NVIDIA A100 datasheet (80GB SXM)"),
    GpuBandwidth(r"\bA100\b", 1555, "NVIDIA A100 datasheet (40GB PCIe and SXM)"),
    GpuBandwidth(r"\bA800\b.*\b80\s?GB\b", 2039, "NVIDIA A800 datasheet (80GB SXM)", approximate=True),
    GpuBandwidth(r"\bGH200\b", 4000, "NVIDIA GH200 datasheet (96 GB HBM3; the 144 GB HBM3e part has 4900)",
                 approximate=True),
    GpuBandwidth(r"\bH200\b", 4800, "NVIDIA H200 datasheet (SXM and NVL)"),
    GpuBandwidth(r"\bH100\b.*\bNVL\b", 3900, "NVIDIA H100 datasheet (NVL, per GPU)"),
    GpuBandwidth(r"\bH100\b.*\bPCIE\b", 2000, "NVIDIA H100 datasheet (PCIe)"),
    GpuBandwidth(r"\bH100\b", 3350, "NVIDIA H100 datasheet (SXM; NVML says 'H100 80GB HBM3')"),
    GpuBandwidth(r"\bH800\b", 3350, "NVIDIA H800 (SXM), as H100 SXM", approximate=True),
    GpuBandwidth(r"\bB200\b", 8000, "NVIDIA DGX B200 / HGX B200 specifications", approximate=True),
    GpuBandwidth(r"\bL40S\b", 864, "NVIDIA L40S datasheet"),
    GpuBandwidth(r"\bL40\b", 864, "NVIDIA L40 datasheet"),
    GpuBandwidth(r"\bL4\b", 300, "NVIDIA L4 datasheet"),
    GpuBandwidth(r"\bA10G\b", 600, "AWS G5 (A10G); NVIDIA publishes no datasheet, as A10", approximate=True),
    GpuBandwidth(r"\bA10\b", 600, "NVIDIA A10 datasheet"),
    GpuBandwidth(r"\bA30\b", 933, "NVIDIA A30 datasheet"),
    GpuBandwidth(r"\bA40\b", 696, "NVIDIA A40 datasheet"),
    GpuBandwidth(r"\bT4\b", 320, "NVIDIA T4 datasheet"),
    GpuBandwidth(r"\bP100\b", 732, "NVIDIA P100 datasheet (16 GB; the 12 GB part has 549)", approximate=True),
    GpuBandwidth(r"\bRTX\s+4090\b", 1008, "NVIDIA GeForce RTX 4090 specifications"),
    GpuBandwidth(r"\bRTX\s+3090\s+TI\b", 1008, "NVIDIA GeForce RTX 3090 Ti specifications"),
    GpuBandwidth(r"\bRTX\s+3090\b", 936, "NVIDIA GeForce RTX 3090 specifications"),
    GpuBandwidth(r"\bRTX\s+6000\s+ADA\b", 960, "NVIDIA RTX 6000 Ada datasheet"),
    GpuBandwidth(r"\bA6000\b", 768, "NVIDIA RTX A6000 datasheet"),
    GpuBandwidth(r"\bMI325X\b", 6000, "AMD Instinct MI325X datasheet"),
    GpuBandwidth(r"\bMI300X\b", 5300, "AMD Instinct MI300X datasheet"),
    GpuBandwidth(r"\bMI250X?\b", 3277, "AMD Instinct MI250X datasheet (MI250 the same)"),
)


def gpu_bandwidth(name: str) -> GpuBandwidth | None:
    """The table row for a GPU name, None when the name is not in the table."""
    upper = name.upper()
    return next((row for row in GPU_BANDWIDTH if re.search(row.pattern, upper)), None)


def parse_gpu_layout(layout: str) -> list[str]:
    """'2x A100 40GB' -> ['A100 40GB', 'A100 40GB']; a name without a count is one GPU."""
    m = re.match(r"^\s*(\d+)\s*[x×]\s*(.+?)\s*$", layout)
    if m is None:
        return [layout.strip()]
    return [m[2]] * int(m[1])
