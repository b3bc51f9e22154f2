"""Lightning's Trainer with one more precision, ``auto``: the fastest one the machine computes natively."""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch.utilities import rank_zero_info


def native_bf16_feature() -> str | None:
    """The CPU feature that computes bfloat16 natively (``AMX`` or ``AVX512_BF16``), or ``None``.

    Without one, oneDNN emulates bf16 convolutions and bf16 autocast is slower than float32.
    """
    checks = {"AMX": "_is_amx_tile_supported", "AVX512_BF16": "_is_avx512_bf16_supported"}
    for feature, check in checks.items():
        if getattr(torch.cpu, check, lambda: False)():
            return feature
    return None


def auto_precision(accelerator: str = "auto") -> tuple[str, str]:
    """The precision ``auto`` picks for ``accelerator``, and why."""
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_cuda:
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} computes bf16"
        return "16-mixed", f"{torch.cuda.get_device_name()} computes fp16, not bf16"
    feature = native_bf16_feature()
    if feature:
        return "bf16-mixed", f"this CPU computes bf16 natively ({feature})"
    return "32-true", "this CPU has neither AMX nor AVX512_BF16, so bf16 would be emulated and slower than float32"


class Trainer(L.Trainer):
    """``lightning.Trainer``; ``precision="auto"`` chooses bf16-mixed on a CPU with AMX or
    AVX512_BF16 and float32 on other CPUs (bf16-mixed or 16-mixed on a GPU), and says which."""

    def __init__(self, *args, precision: _PRECISION_INPUT | Literal["auto"] | None = None, **kwargs) -> None:
        if precision == "auto":
            accelerator = kwargs.get("accelerator", "auto")
            precision, reason = auto_precision(accelerator if isinstance(accelerator, str) else "auto")
            rank_zero_info(f"trainer.precision=auto: {precision}, because {reason}")
        super().__init__(*args, precision=precision, **kwargs)
