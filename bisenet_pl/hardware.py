"""What this CPU offers: the instructions that decide which precision and runtime are fastest on it,
read from /proc/cpuinfo (what OpenVINO and ONNX Runtime can use) and from torch (what its autocast
runs on); and how much of it other processes take while we time something on it."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from functools import cache

import psutil
import torch


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's name and the instructions that decide which deployment is fastest on it."""

    name: str
    flags: frozenset[str]

    @property
    def amx(self) -> bool:
        return {"amx_tile", "amx_bf16"} <= self.flags

    @property
    def native_bf16(self) -> str | None:
        """The feature that computes bfloat16 natively, if any (without one it is emulated, slower than fp32)."""
        return "AMX" if self.amx else "AVX512_BF16" if "avx512_bf16" in self.flags else None

    @property
    def int8_dot_product(self) -> str | None:
        """The feature that multiplies 8-bit integers with 32-bit sums in one step (VNNI or AMX), if any."""
        if {"amx_tile", "amx_int8"} <= self.flags:
            return "AMX"
        return "AVX512_VNNI" if "avx512_vnni" in self.flags else "AVX_VNNI" if "avx_vnni" in self.flags else None

    @property
    def vector(self) -> str:
        return "AVX512" if "avx512f" in self.flags else "AVX2" if "avx2" in self.flags else "SSE/other"

    def describe(self) -> str:
        """E.g. ``AMD EPYC (AVX512, bf16: AVX512_BF16, int8: AVX512_VNNI)``."""
        return (
            f"{self.name} ({self.vector}, bf16: {self.native_bf16 or 'emulated'}, int8: "
            f"{self.int8_dot_product or 'no VNNI'})"
        )


@cache
def cpu_features() -> CpuFeatures:
    """This CPU's features, from ``/proc/cpuinfo`` (elsewhere: the name only, no features)."""
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == (platform.processor() or platform.machine()):
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass
    if not flags:  # no /proc/cpuinfo: what torch sees
        flags = frozenset(
            {"AMX": {"amx_tile", "amx_bf16"}, "AVX512_BF16": {"avx512_bf16"}}.get(native_bf16_feature(), set())
        )
    return CpuFeatures(name, flags)


def native_bf16_feature() -> str | None:
    """The CPU feature that computes bfloat16 natively (``AMX`` or ``AVX512_BF16``) as torch sees
    it, or ``None``: what bf16 autocast in training runs on.

    Without one, oneDNN emulates bf16 convolutions and bf16 autocast is slower than float32.
    """
    checks = {"AMX": "_is_amx_tile_supported", "AVX512_BF16": "_is_avx512_bf16_supported"}
    for feature, check in checks.items():
        if getattr(torch.cpu, check, lambda: False)():
            return feature
    return None


#: Shorter blocks are not judged busy or quiet: the system's CPU clock ticks are too coarse for them.
BUSY_MIN_SECONDS = 1.0


def cpu_seconds() -> tuple[float, float, float]:
    """Three running totals in CPU seconds, for :class:`OtherLoad`: what the machine's CPUs could give (wall
    time times their count), what they were busy for (the hypervisor's steal included) and this process's."""
    machine = psutil.cpu_times()
    # Guest time is counted in user time as well; idle and I/O wait are not busy.
    not_busy = sum(getattr(machine, name, 0.0) for name in ("idle", "iowait", "guest", "guest_nice"))
    own = psutil.Process().cpu_times()
    return time.monotonic() * (psutil.cpu_count() or 1), sum(machine) - not_busy, own.user + own.system


class OtherLoad:
    """``with OtherLoad() as load: ...``: ``load.share``, the share of the machine's CPU time that other
    processes took while the block ran (None for a block under :data:`BUSY_MIN_SECONDS`)."""

    share: float | None = None

    def __enter__(self) -> OtherLoad:
        self._start = cpu_seconds()
        return self

    def __exit__(self, *exception) -> None:
        capacity, busy, own = (end - start for end, start in zip(cpu_seconds(), self._start))
        if capacity >= BUSY_MIN_SECONDS * (psutil.cpu_count() or 1):
            self.share = max(0.0, busy - own) / capacity
