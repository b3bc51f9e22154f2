"""Building blocks shared by BiSeNet V1 and V2."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNAct(nn.Sequential):
    """Convolution without bias, BatchNorm, and (unless ``act=False``) ReLU.

    Children are named ``conv``, ``bn`` and ``act`` so that every conv/BN pair in the
    networks has the same, readable key layout.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        if act:
            self.act = nn.ReLU(inplace=True)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask, on a CPU, is cut from random 64-bit words, four 16-bit lanes each.

    A CPU draws Bernoulli samples one at a time: in a BiSeNetV2 training step on 2 cores the
    heads' dropout masks took longer than the loss. Here an element is kept when its lane is at
    or above ``round(p * 65536)`` (p to within 1e-5) and scaled by the inverse of the kept share,
    as ``nn.Dropout`` does; on other devices and in eval mode this is ``nn.Dropout`` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu" or torch.compiler.is_compiling():
            return super().forward(x)
        if self.p == 1:
            return x * 0
        dropped = round(self.p * 65536)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        keep = words.view(torch.int16)[: x.numel()].view(x.shape) >= dropped - 32768
        return x * (keep.to(x.dtype) * (65536 / (65536 - dropped)))


def resize_to(x: torch.Tensor, size: tuple[int, int] | torch.Size, mode: str) -> torch.Tensor:
    """Resample ``x`` to an exact spatial ``size``.

    The reference upsamples by fixed factors, which only lines feature maps up when the
    input is a multiple of 32. Resizing to the size of the tensor being joined works for
    any input, and for power-of-two ratios it samples exactly the same points.
    """
    # The shortcut compares sizes in Python, which torch.export cannot do for dynamic sizes;
    # resampling to the same size is an exact copy, so exported graphs simply always resample.
    if not torch.compiler.is_exporting() and tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=tuple(size), mode="nearest")
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """The four 2x2 kernels (output phases (0, 0), (0, 1), (1, 0), (1, 1), stacked on the output channels)
    that a 3x3 kernel applies to a map upsampled x2 by nearest neighbour: on output row 2i the taps fall
    on input rows i-1, i, i (kernel rows 0 | 1+2), on row 2i+1 on rows i, i, i+1 (0+1 | 2); columns alike."""

    def phases(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, middle, last = w.unbind(dim)
        return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)

    return torch.cat([kernel for rows in phases(weight, 2) for kernel in phases(rows, 3)])


def nearest2x_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)`` computed on the
    small map: each output phase is a 2x2 convolution of ``x`` (4/9 of the multiply-adds, and the
    upsampled map is never made). Equal to rounding; channels-last output."""
    n, _, height, width = x.shape
    out = weight.shape[0]
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), phase_kernels(weight))  # n, 4 * out, height + 1, width + 1
    y = y.permute(0, 2, 3, 1).unflatten(3, (2, 2, out))  # n, height + 1, width + 1, row phase, col phase, out
    rows = [torch.stack([y[:, a : a + height, b : b + width, a, b] for b in (0, 1)], dim=3) for a in (0, 1)]
    return torch.stack(rows, dim=2).reshape(n, 2 * height, 2 * width, out).permute(0, 3, 1, 2)


class SegmentHead(nn.Module):
    """3x3 conv-BN-ReLU, dropout, optional refinement, 1x1 classifier, bilinear resize.

    With ``refine_channels`` set this is the reference's booster (auxiliary) head: the
    features are upsampled x2 (nearest) and passed through one more 3x3 conv-BN-ReLU before
    the classifier, so that the final bilinear upsampling covers a smaller factor.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        num_classes: int,
        dropout: float = 0.1,
        refine_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, mid_channels, 3)
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        if refine_channels is not None:
            self.refine = ConvBNAct(mid_channels, refine_channels, 3)
            classifier_in = refine_channels
            # By phases only where that measured faster (BiSeNetV2's training step, 192x256 crops, 2 cores,
            # fp32 and bf16): 1.3-4x for the 128 -> 16 and 128 -> 64 refinements; no faster or slower for
            # 128 -> 256 and 128 -> 1024, whose interleaving copy outweighs the saved multiply-adds.
            self.refine_by_phases = refine_channels < mid_channels
        else:
            self.refine, self.refine_by_phases = None, False
            classifier_in = mid_channels
        self.classifier = nn.Conv2d(classifier_in, num_classes, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | torch.Size) -> torch.Tensor:
        x = self.dropout(self.conv(x))
        if self.refine_by_phases:
            x = self.refine.act(self.refine.bn(nearest2x_conv3x3(x, self.refine.conv.weight)))
        elif self.refine is not None:
            x = self.refine(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        # Scores are resized in float32 (a no-op without autocast): under bf16 autocast on a CPU,
        # resizing the few-channel logits in bf16 is slower, and the losses take float32 anyway.
        return resize_to(self.classifier(x).float(), output_size, mode="bilinear")


def depthwise_separable(channels: int) -> nn.Sequential:
    """3x3 depthwise conv-BN, then a 1x1 pointwise conv without norm or activation (BGA's branches)."""
    return nn.Sequential(
        OrderedDict(
            depthwise=ConvBNAct(channels, channels, 3, groups=channels, act=False),
            pointwise=nn.Conv2d(channels, channels, 1, bias=False),
        )
    )


def check_batch_size(x: torch.Tensor, norm: nn.BatchNorm2d, network: str) -> None:
    """Fail clearly where BatchNorm would fail obscurely on a 1x1 pooled map."""
    if norm.training and x.shape[0] < 2:
        raise ValueError(
            f"{network} in training mode needs a batch of at least 2 images, got {x.shape[0]}: "
            "its BatchNorm on the globally pooled (1x1) context map has a single value per "
            "channel otherwise. Use a batch size >= 2 (and drop_last=True in the training "
            "DataLoader), or call .eval() for inference."
        )
