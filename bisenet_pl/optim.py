"""The optimiser and learning-rate schedule of the reference recipe: parameter groups (heads at a
multiple of the learning rate, no weight decay on BatchNorm parameters and biases), SGD or AdamW, and
an exponential warm-up followed by poly decay, stepped every optimiser step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

from bisenet_pl.errors import check_options
from bisenet_pl.models.base import SegmentationNetwork

OptimizerName = Literal["sgd", "adamw"]
#: The longest warm-up a run gets, as a share of its steps: a warm-up as long as the run would
#: never reach the learning rate nor decay it (1000 warm-up steps in a 400-step run).
MAX_WARMUP_FRACTION = 0.1


@dataclass(frozen=True)
class OptimizerOptions:
    """The optimiser and its schedule (``--model.optimizer.*``; the defaults are the reference's).

    Args:
        name: ``sgd`` (with ``momentum``) or ``adamw`` (betas 0.9, 0.999), both with the warm-up
            and poly schedule below.
        lr: base learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay, not applied to BatchNorm parameters and biases.
        head_lr_multiplier: learning-rate factor of the heads (the network's ``head_modules``).
        warmup_steps: exponential warm-up steps.
        warmup_ratio: learning-rate factor at the first step.
        poly_power: power of the poly decay over ``trainer.estimated_stepping_batches``.
    """

    name: OptimizerName = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    head_lr_multiplier: float = 10.0
    warmup_steps: int = 1000
    warmup_ratio: float = 0.1
    poly_power: float = 0.9

    def __post_init__(self) -> None:
        check_options(
            "model.optimizer",
            name=(self.name, "sgd or adamw", self.name in ("sgd", "adamw")),
            lr=(self.lr, "> 0", self.lr > 0),
            momentum=(self.momentum, "in [0, 1)", 0 <= self.momentum < 1),
            weight_decay=(self.weight_decay, ">= 0", self.weight_decay >= 0),
            head_lr_multiplier=(self.head_lr_multiplier, "> 0", self.head_lr_multiplier > 0),
            warmup_steps=(self.warmup_steps, ">= 0", self.warmup_steps >= 0),
            warmup_ratio=(self.warmup_ratio, "in (0, 1]", 0 < self.warmup_ratio <= 1),
            poly_power=(self.poly_power, ">= 0", self.poly_power >= 0),
        )


def max_warmup_steps(total_steps: int) -> int:
    return int(total_steps * MAX_WARMUP_FRACTION)


class WarmupPolyLR:
    """LR factor per step: exponential warm-up from ``warmup_ratio`` to 1 over ``warmup_steps``,
    then poly(``power``) decay to 0 at ``total_steps`` (the reference's WarmupPolyLrScheduler).

    A callable object rather than a lambda so that it is saved with the scheduler state.
    """

    def __init__(
        self, total_steps: int, warmup_steps: int = 1000, warmup_ratio: float = 0.1, power: float = 0.9
    ) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(warmup_steps, max_warmup_steps(self.total_steps))
        self.warmup_ratio = warmup_ratio
        self.power = power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_ratio ** (1 - step / self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return max(0.0, 1 - progress) ** self.power


def parameter_groups(net: SegmentationNetwork, lr: float, head_lr_multiplier: float, weight_decay: float) -> list[dict]:
    """Body and head parameters (the network's ``head_modules``), each with and without weight decay
    (none on BatchNorm parameters and biases), named for the learning-rate monitor."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {
        (h, d): [] for h in (False, True) for d in (False, True)
    }
    for name, param in net.named_parameters():
        if param.requires_grad:
            groups[(net.is_head_parameter(name), param.ndim > 1)].append(param)
    return [
        {
            "params": params,
            "lr": lr * (head_lr_multiplier if is_head else 1.0),
            "weight_decay": weight_decay if decays else 0.0,
            "name": f"{'head' if is_head else 'body'}{'' if decays else '_no_decay'}",
        }
        for (is_head, decays), params in groups.items()
        if params
    ]


def fused_update(net: SegmentationNetwork) -> bool | None:
    """``fused=True`` where torch has a fused update for every parameter (float tensors on a CPU or a CUDA
    GPU): one kernel per step instead of several per parameter, 12 ms -> 2.5 ms for BiSeNetV2's AdamW
    step on 2 cores. ``None`` (torch's choice) elsewhere."""
    parameters = list(net.parameters())
    fusable = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    return True if parameters and fusable else None


def optimizer_and_schedule(net: SegmentationNetwork, total_steps: int, options: OptimizerOptions) -> dict:
    """What ``configure_optimizers`` returns for the recipe: the optimiser and its per-step schedule.
    A warm-up longer than :data:`MAX_WARMUP_FRACTION` of the run is shortened, with a warning."""
    groups = parameter_groups(net, options.lr, options.head_lr_multiplier, options.weight_decay)
    fused = fused_update(net)
    if options.name == "adamw":
        built = torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay, fused=fused)
    else:
        built = torch.optim.SGD(
            groups, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay, fused=fused
        )
    warmup = options.warmup_steps
    schedule = WarmupPolyLR(total_steps, warmup, options.warmup_ratio, options.poly_power)
    if schedule.warmup_steps < warmup:
        rank_zero_warn(
            f"model.optimizer.warmup_steps={warmup} is more than {MAX_WARMUP_FRACTION:.0%} of this run's "
            f"{total_steps} steps: warming up over {schedule.warmup_steps} steps instead (give "
            f"model.optimizer.warmup_steps <= {max_warmup_steps(total_steps)} to choose)"
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(built, schedule)
    return {"optimizer": built, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def sync_learning_rates(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Set the optimiser's learning rates to what ``scheduler`` gives at its current step: after a
    resume, the optimiser holds the rates the checkpointed run's schedule set (for a run of another
    length, maybe), while the schedule is this run's. A no-op in a fresh or unchanged run."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
