"""Measuring networks: parameters, FLOPs (torch's FlopCounterMode) and latency percentiles."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bisenet_pl.hardware import cpu_features


@dataclass(frozen=True)
class Latency:
    """Per-call latency of a batch, in milliseconds, and the images per second it gives."""

    batch_size: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float

    @property
    def fps(self) -> float:
        return 1000.0 * self.batch_size / self.mean_ms


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100), interpolating linearly between order statistics."""
    return float(np.percentile(values, q))


def measure_latency(
    run: Callable[[], Any],
    batch_size: int = 1,
    warmup: int = 3,
    iterations: int = 20,
    device: torch.device | str = "cpu",
) -> Latency:
    """Time ``run()`` after ``warmup`` untimed calls; on CUDA each call is synchronised."""
    return measure_interleaved({"run": run}, batch_size, warmup, iterations, device, rounds=1)["run"]


def measure_interleaved(
    runs: dict[str, Callable[[], Any]],
    batch_size: int = 1,
    warmup: int = 3,
    iterations: int = 20,
    device: torch.device | str = "cpu",
    rounds: int = 4,
) -> dict[str, Latency]:
    """Time several ways of doing the same thing in alternating blocks (``rounds`` blocks of
    ``iterations / rounds`` calls each, after an untimed call), so that drifts of a shared machine
    affect them alike while each block runs undisturbed by the others' thread pools."""
    device = torch.device(device)
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for run in runs.values():
        for _ in range(warmup):
            run()
    synchronize()
    rounds = max(1, min(rounds, iterations))
    per_block = [iterations // rounds + (1 if r < iterations % rounds else 0) for r in range(rounds)]
    times: dict[str, list[float]] = {name: [] for name in runs}
    for block in per_block:
        for name, run in runs.items():
            run()  # untimed: lets the previous variant's threads go idle
            synchronize()
            for _ in range(block):
                start = time.perf_counter()
                run()
                synchronize()
                times[name].append(1000 * (time.perf_counter() - start))
    return {
        name: Latency(batch_size, statistics.fmean(t), percentile(t, 50), percentile(t, 90), percentile(t, 99))
        for name, t in times.items()
    }


def cpu_description() -> str:
    """The CPU's model name, its widest vector instructions and its native bf16 and int8 features,
    e.g. ``AMD EPYC (AVX512, bf16: AVX512_BF16, int8: AVX512_VNNI)``."""
    return cpu_features().describe()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, images: torch.Tensor) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts 2), by torch's FlopCounterMode."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(images)
    return counter.get_total_flops()
