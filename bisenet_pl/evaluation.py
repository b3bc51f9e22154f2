"""The reference's four evaluation modes: single scale (ss), single-scale sliding-window crops
(ssc), multi-scale with flip (msf) and multi-scale crops with flip (mscf).

Scores are class probabilities summed over scales, flips and windows, as CoinCheung/BiSeNet's
``tools/evaluate.py`` does; images are resized with bilinear ``align_corners=True`` to
``int(scale * size)`` and the scores back to the label size the same way. Two details of the
reference are kept so that its released checkpoints score as published: crops are zero-padded
(centred) up to the crop size when the image is smaller in either direction, and with flip a
window's two probability maps are summed and then exponentiated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bisenet_pl.errors import check_options

EvalMode = Literal["ss", "ssc", "msf", "mscf"]
#: The reference's multi-scale set.
REFERENCE_SCALES: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class EvaluationProtocol:
    """How validation, test and prediction turn an image into class scores (``--model.evaluation.*``).

    Args:
        mode: ``ss``, ``ssc``, ``msf`` or ``mscf``.
        scales: image scales; default ``(1.0,)`` for ss/ssc and 0.5-1.75 for msf/mscf. A single
            scale of 0.5 with ``ss`` is the BiSeNetV2 paper's Cityscapes protocol (inference at
            512x1024, prediction resized to 1024x2048).
        flip: add horizontally flipped images; default on for msf/mscf.
        crop_size: sliding-window size (H, W) for ssc/mscf.
        crop_stride: window stride as a fraction of the crop size.
    """

    mode: EvalMode = "ss"
    scales: tuple[float, ...] | None = None
    flip: bool | None = None
    crop_size: tuple[int, int] = (1024, 1024)
    crop_stride: float = 2 / 3

    def __post_init__(self) -> None:
        scales, crop = self.scales, self.crop_size
        check_options(
            "model.evaluation",
            mode=(self.mode, "ss, ssc, msf or mscf", self.mode in ("ss", "ssc", "msf", "mscf")),
            scales=(scales, "positive numbers", scales is None or (len(scales) > 0 and min(scales) > 0)),
            crop_size=(crop, "[height, width], each >= 1", len(crop) == 2 and min(crop) >= 1),
            crop_stride=(self.crop_stride, "a fraction of the crop size in (0, 1]", 0 < self.crop_stride <= 1),
        )
        # Tuples whatever was given (YAML and JSON give lists): the protocol is compared and hashed.
        object.__setattr__(self, "crop_size", tuple(crop))
        if scales is not None:
            object.__setattr__(self, "scales", tuple(scales))

    @property
    def multi_scale(self) -> bool:
        return self.mode in ("msf", "mscf")

    @property
    def cropped(self) -> bool:
        return self.mode in ("ssc", "mscf")

    @property
    def scale_list(self) -> tuple[float, ...]:
        return tuple(self.scales) if self.scales is not None else (REFERENCE_SCALES if self.multi_scale else (1.0,))

    @property
    def flips(self) -> bool:
        return self.multi_scale if self.flip is None else self.flip

    @property
    def is_plain(self) -> bool:
        """One forward pass at the image's own size: the logits themselves are the scores."""
        return not self.cropped and self.scale_list == (1.0,) and not self.flips


def main_logits(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The main head's logits, whether the network returns them alone (eval) or first (train)."""
    logits = net(images)
    return logits[0] if isinstance(logits, tuple) else logits


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis: every ``stride``, the last one flush with the end."""
    count = math.ceil((length - crop) / stride) + 1
    return [min(length, i * stride + crop) - crop for i in range(count)]


def _pad_to_crop(images: torch.Tensor, crop: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-pad (centred) to at least the crop size unless the image exceeds it both ways."""
    height, width = images.shape[-2:]
    if crop[0] < height and crop[1] < width:
        return images, (0, height, 0, width)
    padded_h, padded_w = max(crop[0], height), max(crop[1], width)
    top, left = (padded_h - height) // 2, (padded_w - width) // 2
    padded = images.new_zeros((*images.shape[:2], padded_h, padded_w))
    padded[..., top : top + height, left : left + width] = images
    return padded, (top, top + height, left, left + width)


def _window_scores(net: nn.Module, chip: torch.Tensor, flip: bool) -> torch.Tensor:
    scores = main_logits(net, chip).softmax(dim=1)
    if flip:
        scores = scores + main_logits(net, chip.flip(dims=(3,))).flip(dims=(3,)).softmax(dim=1)
        scores = scores.exp()  # the reference's crop evaluator does this; kept for its numbers
    return scores


def _sliding_window_scores(net: nn.Module, images: torch.Tensor, protocol: EvaluationProtocol) -> torch.Tensor:
    crop = tuple(protocol.crop_size)
    padded, (top, bottom, left, right) = _pad_to_crop(images, crop)
    height, width = padded.shape[-2:]
    strides = [math.ceil(c * protocol.crop_stride) for c in crop]
    scores = None
    for y in window_starts(height, crop[0], strides[0]):
        for x in window_starts(width, crop[1], strides[1]):
            chip_scores = _window_scores(net, padded[..., y : y + crop[0], x : x + crop[1]], protocol.flips)
            if scores is None:
                scores = padded.new_zeros((padded.shape[0], chip_scores.shape[1], height, width))
            scores[..., y : y + crop[0], x : x + crop[1]] += chip_scores
    return scores[..., top:bottom, left:right]


@torch.no_grad()
def class_scores(
    net: nn.Module, images: torch.Tensor, protocol: EvaluationProtocol = EvaluationProtocol()
) -> torch.Tensor:
    """(N, C, H, W) scores at the images' size whose argmax over C is the prediction."""
    if protocol.is_plain:
        return main_logits(net, images)
    size = images.shape[-2:]
    total = None
    for scale in protocol.scale_list:
        scaled = _resize(images, (int(scale * size[0]), int(scale * size[1])))
        if protocol.cropped:
            scores = _resize(_sliding_window_scores(net, scaled, protocol), size)
        else:
            scores = _resize(main_logits(net, scaled), size).softmax(dim=1)
            if protocol.flips:
                flipped = main_logits(net, scaled.flip(dims=(3,))).flip(dims=(3,))
                scores = scores + _resize(flipped, size).softmax(dim=1)
        total = scores if total is None else total + scores
    return total


def probabilities(scores: torch.Tensor, protocol: EvaluationProtocol) -> torch.Tensor:
    """Class probabilities from :func:`class_scores`: the softmax of logits, or the summed scores
    of several passes normalised to sum to one."""
    if protocol.is_plain:
        return scores.float().softmax(dim=1)
    return scores / scores.sum(dim=1, keepdim=True)
