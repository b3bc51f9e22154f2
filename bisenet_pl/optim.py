"""The optimiser and learning-rate schedule of the reference recipe: parameter groups (heads at a
multiple of the learning rate, no weight decay on BatchNorm parameters and biases), SGD or AdamW, and
an exponential warm-up followed by poly decay, stepped every optimiser step."""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

from bisenet_pl.models.base import SegmentationNetwork

OptimizerName = Literal["sgd", "adamw"]
#: The longest warm-up a run gets, as a share of its steps: a warm-up as long as the run would
#: never reach the learning rate nor decay it (1000 warm-up steps in a 400-step run).
MAX_WARMUP_FRACTION = 0.1


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


def optimizer_and_schedule(
    net: SegmentationNetwork,
    total_steps: int,
    *,
    optimizer: OptimizerName,
    lr: float,
    momentum: float,
    weight_decay: float,
    head_lr_multiplier: float,
    warmup_steps: int,
    warmup_ratio: float,
    poly_power: float,
) -> dict:
    """What ``configure_optimizers`` returns for the recipe (options as the LightningModule documents and
    defaults them): the optimiser and its per-step schedule. A warm-up longer than
    :data:`MAX_WARMUP_FRACTION` of the run is shortened, with a warning."""
    groups = parameter_groups(net, lr, head_lr_multiplier, weight_decay)
    fused = fused_update(net)
    if optimizer == "adamw":
        built = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused)
    else:
        built = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    schedule = WarmupPolyLR(total_steps, warmup_steps, warmup_ratio, poly_power)
    if schedule.warmup_steps < warmup_steps:
        rank_zero_warn(
            f"model.warmup_steps={warmup_steps} is more than {MAX_WARMUP_FRACTION:.0%} of this run's {total_steps} "
            f"steps: warming up over {schedule.warmup_steps} steps instead (give model.warmup_steps <= "
            f"{max_warmup_steps(total_steps)} to choose)"
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
