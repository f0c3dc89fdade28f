"""This machine's fp32 peak, the denominator of every "% of peak" in the benchmarks.

Two estimates, and the larger is the peak (so no figure reads better than it is):
- nominal: cores x clock x fp32 FLOPs/cycle/core from /proc/cpuinfo (2 FMA units x vector lanes x 2;
  AVX-512 64, AVX2 32). A VM reports its nominal (TSC) clock: a Zen 5 guest here says 2.60 GHz
  while boosting well above it, and then trains faster than this "peak".
- measured: the best fp32 rate of a large, compute-bound 3x3 convolution (oneDNN, NHWC, every core),
  a floor under the real peak that includes the real clock.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Peak:
    nominal_gflops: float
    measured_gflops: float
    nominal: str  # how the nominal figure was made

    @property
    def gflops(self) -> float:
        return max(self.nominal_gflops, self.measured_gflops)

    def describe(self) -> str:
        return (f"{self.gflops:.0f} GFLOP/s, the larger of nominal {self.nominal_gflops:.0f} ({self.nominal}) "
                f"and measured {self.measured_gflops:.0f} (3x3 conv, fp32, NHWC, {torch.get_num_threads()} threads)")

    def as_dict(self) -> dict:
        return {"gflops": self.gflops, "nominal_gflops": self.nominal_gflops,
                "measured_gflops": self.measured_gflops, "description": self.describe()}


def nominal_gflops() -> tuple[float, str]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((ln for ln in info.splitlines() if ln.startswith("flags")), "")
    mhz = [float(ln.split(":")[1]) for ln in info.splitlines() if ln.startswith("cpu MHz")]
    ghz = (max(mhz) / 1000) if mhz else 2.0
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else ((8, "AVX2+FMA") if "fma" in flags else (4, "SSE"))
    per_cycle = lanes * 2 * 2  # lanes x FMA (2 FLOPs) x 2 FMA units
    cores = os.cpu_count() or 1
    model = next((ln.split(":")[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    return cores * ghz * per_cycle, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle, {isa}, {model}"


@torch.no_grad()
def measured_gflops(repeats: int = 5, size: int = 16, width: int = 512) -> float:
    """Best of `repeats` timings of a 64 x width x size x size 3x3 convolution (about 19 GFLOP at the defaults)."""
    x = torch.randn(64, width, size, size).contiguous(memory_format=torch.channels_last)
    w = torch.randn(width, width, 3, 3).contiguous(memory_format=torch.channels_last)
    flops = 2 * 64 * size * size * width * width * 9
    torch.nn.functional.conv2d(x, w, padding=1)  # oneDNN picks and caches its kernel
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.nn.functional.conv2d(x, w, padding=1)
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def cpu_peak(quick: bool = False) -> Peak:
    """quick: a small probe (the tests): the figure then means little."""
    nominal, how = nominal_gflops()
    measured = measured_gflops(1, 8, 64) if quick else measured_gflops()
    return Peak(nominal, measured, how)
