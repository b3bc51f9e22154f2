"""Segmentation losses: cross-entropy, OHEM cross-entropy (as the reference), Dice.

Every loss is computed in float32 whatever the autocast dtype, so it is safe under AMP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bisenet_pl.errors import ConfigError, NonFiniteLossError, check_options

LossName = Literal["ce", "ohem", "dice", "ce+dice", "ohem+dice"]


def _numbers(value: float | list[float] | None) -> list[float]:
    return [] if value is None else [value] if isinstance(value, (int, float)) else list(value)


@dataclass(frozen=True)
class LossOptions:
    """The training loss of every head (``--model.loss.*``; the defaults are the reference's).

    Args:
        name: ``ce``, ``ohem`` (the reference), ``dice``, or a sum such as ``ohem+dice``.
        ohem_threshold: OHEM keeps pixels predicted below this probability.
        ohem_min_kept_fraction: OHEM keeps at least this share of the valid pixels.
        class_weights: per-class cross-entropy weights (e.g. median-frequency weights from
            ``bisenet-pl stats``).
        aux_weights: weight of each auxiliary head's loss, one number for all or one per head
            (in the network's head order). A head with weight 0 is removed and never computed.
    """

    name: LossName = "ohem"
    ohem_threshold: float = 0.7
    ohem_min_kept_fraction: float = 1 / 16
    class_weights: list[float] | None = None
    aux_weights: float | list[float] = 1.0

    def __post_init__(self) -> None:
        check_options(
            "model.loss",
            ohem_threshold=(self.ohem_threshold, "in (0, 1)", 0 < self.ohem_threshold < 1),
            ohem_min_kept_fraction=(self.ohem_min_kept_fraction, "in [0, 1]", 0 <= self.ohem_min_kept_fraction <= 1),
            class_weights=(self.class_weights, "numbers >= 0", all(w >= 0 for w in _numbers(self.class_weights))),
            aux_weights=(self.aux_weights, "numbers >= 0", all(w >= 0 for w in _numbers(self.aux_weights))),
        )

    def build(self, num_classes: int, ignore_index: int) -> nn.Module:
        """The loss for ``num_classes`` classes (see :func:`build_loss`)."""
        count = None if self.class_weights is None else len(self.class_weights)
        if count is not None and count != num_classes:
            raise ConfigError(f"model.loss.class_weights has {count} values for {num_classes} classes")
        weights = torch.tensor(self.class_weights, dtype=torch.float32) if self.class_weights is not None else None
        try:
            return build_loss(self.name, ignore_index, self.ohem_threshold, self.ohem_min_kept_fraction, weights)
        except ValueError as error:
            raise ConfigError(f"model.loss.name: {error}") from None


def _zero_like_graph(logits: torch.Tensor) -> torch.Tensor:
    """A zero loss that still reaches every parameter (DDP needs a gradient for each)."""
    return logits.float().sum() * 0.0


class CrossEntropy(nn.Module):
    def __init__(self, ignore_index: int = 255, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def pixel_losses(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), target, weight=self.weight, ignore_index=self.ignore_index, reduction=reduction
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not (target != self.ignore_index).any():
            return _zero_like_graph(logits)
        return self.pixel_losses(logits, target, reduction="mean")


class OhemCrossEntropy(CrossEntropy):
    """Online hard example mining: average the pixel losses above ``-log(threshold)`` (pixels
    predicted with probability below ``threshold``), and at least the hardest
    ``min_kept_fraction`` of the batch's valid pixels. Ignored pixels are never selected.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        threshold: float = 0.7,
        min_kept_fraction: float = 1 / 16,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(ignore_index, weight)
        if not 0 < threshold < 1:
            raise ValueError(f"OHEM threshold is a probability in (0, 1); got {threshold}")
        self.loss_threshold = -math.log(threshold)
        self.min_kept_fraction = min_kept_fraction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Masks rather than boolean indexing: the same selection without the gathers and
        # scatters (nonzero, index_put) that cost a CPU step more than the loss itself.
        valid = target != self.ignore_index
        num_valid = int(valid.sum())
        if num_valid == 0:
            return _zero_like_graph(logits)
        losses = self.pixel_losses(logits, target)  # 0 at ignored pixels, below any threshold
        min_kept = int(num_valid * self.min_kept_fraction)
        hard = losses > self.loss_threshold
        num_hard = int(hard.sum())
        if num_hard < min_kept:
            return losses.masked_fill(~valid, -1.0).flatten().topk(min_kept).values.mean()
        if num_hard == 0:
            return _zero_like_graph(logits)
        return (losses * hard).sum() / num_hard


class DiceLoss(nn.Module):
    """Soft multi-class Dice on softmax probabilities over the batch, ignored pixels excluded,
    averaged over all classes (one absent from both labels and predictions scores 1)."""

    def __init__(self, ignore_index: int = 255, smooth: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        valid = (target != self.ignore_index).unsqueeze(1)
        probs = logits.float().softmax(dim=1) * valid
        one_hot = F.one_hot(target.masked_fill(~valid.squeeze(1), 0), num_classes).permute(0, 3, 1, 2) * valid
        dims = (0, 2, 3)
        intersection = (probs * one_hot).sum(dims)
        cardinality = probs.sum(dims) + one_hot.sum(dims)
        dice = (2 * intersection + self.smooth) / (cardinality + self.smooth)
        return 1.0 - dice.mean()


class SumOfLosses(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


def build_loss(
    name: LossName,
    ignore_index: int = 255,
    ohem_threshold: float = 0.7,
    ohem_min_kept_fraction: float = 1 / 16,
    class_weights: torch.Tensor | None = None,
) -> nn.Module:
    """The named loss; ``a+b`` sums two of them. Class weights apply to the cross-entropy part."""
    parts = {
        "ce": lambda: CrossEntropy(ignore_index, class_weights),
        "ohem": lambda: OhemCrossEntropy(ignore_index, ohem_threshold, ohem_min_kept_fraction, class_weights),
        "dice": lambda: DiceLoss(ignore_index),
    }
    names = name.split("+")
    unknown = [n for n in names if n not in parts]
    if unknown:
        raise ValueError(f"unknown loss {name!r}; choose from ce, ohem, dice, ce+dice, ohem+dice")
    losses = [parts[n]() for n in names]
    return losses[0] if len(losses) == 1 else SumOfLosses(*losses)


def check_finite(loss: torch.Tensor, step: int) -> None:
    """A training loss that is not finite stops the run, in words, at the step it happened."""
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite training loss ({loss.item()}) at step {step}: lower model.optimizer.lr, "
            "use precision 32 or bf16-mixed instead of 16-mixed, or check the data for corrupt images"
        )
