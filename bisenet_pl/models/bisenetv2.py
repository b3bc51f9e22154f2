"""BiSeNet V2 (Yu et al., IJCV 2021), as implemented by the reference CoinCheung/BiSeNet.

The reference differs from the paper in details its released checkpoints depend on (extra
ReLUs in the GE layers and the aggregation, BN-ReLU in the context block, 1024-channel main
head, booster heads with a x2 refinement step); this module follows the reference exactly
and only replaces its fixed-factor upsampling by resizing to the joined tensor's size, so
that any input size works.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bisenet_pl.models.layers import ConvBNAct, SegmentHead, check_batch_size, resize_to

#: Booster head positions in forward-output order, with each feature's channels and stride.
V2_AUX_POSITIONS: dict[str, tuple[int, int]] = {
    "stem": (16, 4),
    "stage3": (32, 8),
    "stage4": (64, 16),
    "stage5": (128, 32),
}


class DetailBranch(nn.Module):
    """Wide, shallow branch keeping spatial detail: three stages of 3x3 convs to 1/8."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (64, 64, 128), depths: Sequence[int] = (2, 3, 3)) -> None:
        super().__init__()
        stages = []
        for out_channels, depth in zip(channels, depths, strict=True):
            layers = [ConvBNAct(in_channels, out_channels, 3, stride=2)]
            layers += [ConvBNAct(out_channels, out_channels, 3) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = out_channels
        self.stage1, self.stage2, self.stage3 = stages
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(x)))


class StemBlock(nn.Module):
    """Fast 1/4 downsampling: a conv path and a max-pool path, concatenated and fused."""

    def __init__(self, in_channels: int = 3, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 3, stride=2)
        self.conv_path = nn.Sequential(
            ConvBNAct(out_channels, out_channels // 2, 1),
            ConvBNAct(out_channels // 2, out_channels, 3, stride=2),
        )
        self.pool_path = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.fuse = ConvBNAct(2 * out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.conv_path(x), self.pool_path(x)], dim=1))


class GatherExpansionLayer(nn.Module):
    """Gather-and-Expansion layer.

    Stride 1: gather (3x3 conv) -> expand (3x3 depthwise, x``expansion`` channels) ->
    project (1x1), plus the identity. Stride 2 downsamples in the expansion (no ReLU there),
    adds a second 3x3 depthwise conv, and projects the shortcut with a depthwise-separable
    conv. The projection's BN starts at zero gamma so each layer starts as its shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"GatherExpansionLayer stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError("a stride-1 GatherExpansionLayer keeps its channels (identity shortcut)")
        mid_channels = in_channels * expansion
        self.gather = ConvBNAct(in_channels, in_channels, 3)
        self.expand = ConvBNAct(in_channels, mid_channels, 3, stride=stride, groups=in_channels, act=stride == 1)
        if stride == 2:
            self.depthwise = ConvBNAct(mid_channels, mid_channels, 3, groups=mid_channels)
            self.shortcut = nn.Sequential(
                OrderedDict(
                    depthwise=ConvBNAct(in_channels, in_channels, 3, stride=2, groups=in_channels, act=False),
                    pointwise=ConvBNAct(in_channels, out_channels, 1, act=False),
                )
            )
        else:
            self.depthwise = nn.Identity()
            self.shortcut = nn.Identity()
        self.project = ConvBNAct(mid_channels, out_channels, 1, act=False)
        self.project.bn.zero_init = True
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(self.gather(x))))
        return self.act(out + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average pool -> BN -> 1x1 conv, broadcast-added to the input, then a 3x3 conv."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.pooled_conv = ConvBNAct(channels, channels, 1)
        self.fuse = ConvBNAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.pooled_conv(self.norm(x.mean(dim=(2, 3), keepdim=True)))
        return self.fuse(x + context)


class SemanticBranch(nn.Module):
    """Narrow, deep branch for context: stem (1/4), GE stages 3-5 (1/8, 1/16, 1/32), context embedding."""

    def __init__(self, in_channels: int = 3, channels: Sequence[int] = (16, 32, 64, 128), depths: Sequence[int] = (2, 2, 4), expansion: int = 6) -> None:
        super().__init__()
        self.stem = StemBlock(in_channels, channels[0])
        stages = []
        for stage_in, stage_out, depth in zip(channels[:-1], channels[1:], depths, strict=True):
            layers = [GatherExpansionLayer(stage_in, stage_out, stride=2, expansion=expansion)]
            layers += [GatherExpansionLayer(stage_out, stage_out, expansion=expansion) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
        self.stage3, self.stage4, self.stage5 = stages
        self.context_embedding = ContextEmbedding(channels[-1])
        self.out_channels = channels[-1]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return every feature the heads use: ``stem``, ``stage3``..``stage5`` and ``context``."""
        feats = {"stem": self.stem(x)}
        feats["stage3"] = self.stage3(feats["stem"])
        feats["stage4"] = self.stage4(feats["stage3"])
        feats["stage5"] = self.stage5(feats["stage4"])
        feats["context"] = self.context_embedding(feats["stage5"])
        return feats


class BilateralGuidedAggregation(nn.Module):
    """Each branch gates the other at both resolutions (1/8 "high" and 1/32 "low")."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.detail_high = nn.Sequential(
            OrderedDict(
                depthwise=ConvBNAct(channels, channels, 3, groups=channels, act=False),
                pointwise=nn.Conv2d(channels, channels, 1, bias=False),
            )
        )
        self.detail_low = nn.Sequential(
            OrderedDict(
                downsample=ConvBNAct(channels, channels, 3, stride=2, act=False),
                pool=nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
        self.semantic_high = ConvBNAct(channels, channels, 3, act=False)
        self.semantic_low = nn.Sequential(
            OrderedDict(
                depthwise=ConvBNAct(channels, channels, 3, groups=channels, act=False),
                pointwise=nn.Conv2d(channels, channels, 1, bias=False),
            )
        )
        self.fuse = ConvBNAct(channels, channels, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        high_size = detail.shape[-2:]
        semantic_gate = resize_to(self.semantic_high(semantic), high_size, mode="nearest")
        high = self.detail_high(detail) * torch.sigmoid(semantic_gate)
        low = self.detail_low(detail) * torch.sigmoid(self.semantic_low(semantic))
        return self.fuse(high + resize_to(low, high_size, mode="nearest"))


class BiSeNetV2(nn.Module):
    """BiSeNet V2 for semantic segmentation.

    Args:
        num_classes: number of output classes.
        aux_heads: booster heads to build, any of ``stem``, ``stage3``, ``stage4``,
            ``stage5`` (on the last GE stage, before the context block). They are used in
            training only; forward returns them after the main logits in that order.
        expansion: GE layer expansion ratio.
        head_channels: width of the main head's 3x3 conv.
        aux_channels: width of each booster head's 3x3 conv.
        dropout: dropout before the classifiers.
        in_channels: input image channels.

    Forward returns ``(main, *aux)`` logits in training mode and the main logits alone in
    eval mode; every output has the input's spatial size, whatever that size is.
    """

    #: Modules trained at the head learning rate (10x in the reference recipe).
    head_modules: tuple[str, ...] = ("head", "aux_heads")

    def __init__(
        self,
        num_classes: int,
        aux_heads: Sequence[str] = tuple(V2_AUX_POSITIONS),
        expansion: int = 6,
        head_channels: int = 1024,
        aux_channels: int = 128,
        dropout: float = 0.1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        unknown = set(aux_heads) - set(V2_AUX_POSITIONS)
        if unknown:
            raise ValueError(f"unknown BiSeNetV2 aux_heads {sorted(unknown)}; choose from {list(V2_AUX_POSITIONS)}")
        self.num_classes = num_classes
        self.detail_branch = DetailBranch(in_channels)
        self.semantic_branch = SemanticBranch(in_channels, expansion=expansion)
        self.aggregation = BilateralGuidedAggregation(self.detail_branch.out_channels)
        self.head = SegmentHead(self.detail_branch.out_channels, head_channels, num_classes, dropout)
        # Each booster head refines to stride**2 channels before its classifier, as the reference.
        self.aux_heads = nn.ModuleDict(
            {
                name: SegmentHead(channels, aux_channels, num_classes, dropout, refine_channels=stride**2)
                for name, (channels, stride) in V2_AUX_POSITIONS.items()
                if name in aux_heads
            }
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) convolutions, unit BN, zero-gamma GE projections."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                nn.init.constant_(module.weight, 0.0 if getattr(module, "zero_init", False) else 1.0)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        check_batch_size(x, self.semantic_branch.context_embedding.norm, type(self).__name__)
        size = x.shape[-2:]
        semantic = self.semantic_branch(x)
        fused = self.aggregation(self.detail_branch(x), semantic["context"])
        logits = self.head(fused, size)
        if not self.training:
            return logits
        return (logits, *(head(semantic[name], size) for name, head in self.aux_heads.items()))
