"""BiSeNet V2 (Yu et al., IJCV 2021), as implemented by the reference CoinCheung/BiSeNet.

The reference differs from the paper in details its released checkpoints depend on (extra
ReLUs in the GE layers and the aggregation, BN-ReLU in the context block, 1024-channel main
head, booster heads with a x2 refinement step); this module follows the reference exactly
and only replaces its fixed-factor upsampling by resizing to the joined tensor's size, so
that any input size works.

The paper's ablations are constructor options whose defaults are the reference network:
which branches exist (``branches``), how they are joined (``aggregation``), the semantic
branch's width relative to the detail branch (``semantic_ratio``, the paper's lambda), the GE
expansion ratio, and the width/depth multipliers of BiSeNetV2-Large (2.0 and 3.0).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from bisenet_pl.models.base import SegmentationNetwork
from bisenet_pl.models.layers import ConvBNAct, SegmentHead, check_batch_size, depthwise_separable, resize_to

#: Booster head positions in forward-output order, with each feature's stride.
V2_AUX_POSITIONS: dict[str, int] = {"stem": 4, "stage3": 8, "stage4": 16, "stage5": 32}

#: The reference's detail branch: channels and layers (the first of each stage has stride 2).
DETAIL_CHANNELS: tuple[int, ...] = (64, 64, 128)
DETAIL_DEPTHS: tuple[int, ...] = (2, 3, 3)
#: Semantic branch widths (stem, stages 3-5) as multiples of lambda x the detail branch's first width.
SEMANTIC_WIDTH_FACTORS: tuple[int, ...] = (1, 2, 4, 8)
SEMANTIC_DEPTHS: tuple[int, ...] = (2, 2, 4)

Branches = Literal["both", "detail", "semantic"]
Aggregation = Literal["bga", "sum", "concat"]


class DetailBranch(nn.Module):
    """Wide, shallow branch keeping spatial detail: three stages of 3x3 convs to 1/8."""

    def __init__(
        self, in_channels: int = 3, channels: Sequence[int] = DETAIL_CHANNELS, depths: Sequence[int] = DETAIL_DEPTHS
    ) -> None:
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
    """Global average pool -> BN -> 1x1 conv, broadcast-added to the input, then a 3x3 conv
    (to ``out_channels``: the detail branch's width when the semantic branch is narrower or wider)."""

    def __init__(self, channels: int = 128, out_channels: int | None = None) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.pooled_conv = ConvBNAct(channels, channels, 1)
        self.fuse = ConvBNAct(channels, out_channels or channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = self.pooled_conv(self.norm(x.mean(dim=(2, 3), keepdim=True)))
        return self.fuse(x + context)


class SemanticBranch(nn.Module):
    """Narrow, deep branch for context: stem (1/4), GE stages 3-5 (1/8, 1/16, 1/32), context embedding."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128),
        depths: Sequence[int] = SEMANTIC_DEPTHS,
        expansion: int = 6,
        out_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.channels = dict(zip(V2_AUX_POSITIONS, channels, strict=True))
        self.stem = StemBlock(in_channels, channels[0])
        stages = []
        for stage_in, stage_out, depth in zip(channels[:-1], channels[1:], depths, strict=True):
            layers = [GatherExpansionLayer(stage_in, stage_out, stride=2, expansion=expansion)]
            layers += [GatherExpansionLayer(stage_out, stage_out, expansion=expansion) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
        self.stage3, self.stage4, self.stage5 = stages
        self.out_channels = out_channels or channels[-1]
        self.context_embedding = ContextEmbedding(channels[-1], self.out_channels)

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
        self.detail_high = depthwise_separable(channels)
        self.detail_low = nn.Sequential(
            OrderedDict(
                downsample=ConvBNAct(channels, channels, 3, stride=2, act=False),
                pool=nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
            )
        )
        self.semantic_high = ConvBNAct(channels, channels, 3, act=False)
        self.semantic_low = depthwise_separable(channels)
        self.fuse = ConvBNAct(channels, channels, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        high_size = detail.shape[-2:]
        semantic_gate = resize_to(self.semantic_high(semantic), high_size, mode="nearest")
        high = self.detail_high(detail) * torch.sigmoid(semantic_gate)
        low = self.detail_low(detail) * torch.sigmoid(self.semantic_low(semantic))
        return self.fuse(high + resize_to(low, high_size, mode="nearest"))


class SumAggregation(nn.Module):
    """Ablation baseline: upsample the semantic features, add the detail features, 3x3 conv."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.fuse = ConvBNAct(channels, channels, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        return self.fuse(detail + resize_to(semantic, detail.shape[-2:], mode="bilinear"))


class ConcatAggregation(nn.Module):
    """Ablation baseline: upsample the semantic features, concatenate, 3x3 conv back to ``channels``."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.fuse = ConvBNAct(2 * channels, channels, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([detail, resize_to(semantic, detail.shape[-2:], mode="bilinear")], dim=1))


AGGREGATIONS: dict[str, type[nn.Module]] = {
    "bga": BilateralGuidedAggregation,
    "sum": SumAggregation,
    "concat": ConcatAggregation,
}


def scaled_depth(depth: int, multiplier: float) -> int:
    """Layers of a stage whose stride-1 repeats (all but the first layer) are scaled by ``multiplier``."""
    return 1 + max(1, round((depth - 1) * multiplier))


class BiSeNetV2(SegmentationNetwork):
    """BiSeNet V2 for semantic segmentation.

    Args:
        num_classes: number of output classes.
        aux_heads: booster heads to build, any of ``stem``, ``stage3``, ``stage4``,
            ``stage5`` (on the last GE stage, before the context block). They are used in
            training only; forward returns them after the main logits in that order.
        expansion: GE layer expansion ratio (the paper's epsilon).
        head_channels: width of the main head's 3x3 conv.
        aux_channels: width of each booster head's 3x3 conv.
        dropout: dropout before the classifiers.
        in_channels: input image channels.
        branches: ``both``, or ablate to the ``detail`` or the ``semantic`` branch alone (the
            head then sits on that branch's output; ``detail`` has no booster heads).
        aggregation: how the branches join: ``bga`` (bilateral guided aggregation), or the
            ablation baselines ``sum`` and ``concat`` (upsample, join, 3x3 conv).
        semantic_ratio: the semantic branch's width as a fraction of the detail branch's
            (the paper's lambda: 1/2, 1/4, 1/8, 1/16); the context block projects back to the
            detail width when it differs.
        width_multiplier: scales every channel count of both branches (the paper's alpha).
        depth_multiplier: scales the stride-1 layers of every stage of both branches (d).
            BiSeNetV2-Large is ``width_multiplier=2.0, depth_multiplier=3.0``.

    Forward returns ``(main, *aux)`` logits in training mode and the main logits alone in
    eval mode; every output has the input's spatial size, whatever that size is.
    """

    def __init__(
        self,
        num_classes: int,
        aux_heads: Sequence[str] = tuple(V2_AUX_POSITIONS),
        expansion: int = 6,
        head_channels: int = 1024,
        aux_channels: int = 128,
        dropout: float = 0.1,
        in_channels: int = 3,
        branches: Branches = "both",
        aggregation: Aggregation = "bga",
        semantic_ratio: float = 0.25,
        width_multiplier: float = 1.0,
        depth_multiplier: float = 1.0,
    ) -> None:
        super().__init__(num_classes)
        self.check_aux_heads(aux_heads, V2_AUX_POSITIONS)
        if branches not in ("both", "detail", "semantic"):
            raise ValueError(f"BiSeNetV2 branches must be both, detail or semantic, got {branches!r}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"BiSeNetV2 aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
        if branches == "detail" and aux_heads:
            raise ValueError(
                "BiSeNetV2 with branches='detail' has no semantic branch for booster heads: set aux_heads to []"
            )
        self.branches = branches
        detail_channels = [self._channels(c * width_multiplier, "width_multiplier") for c in DETAIL_CHANNELS]
        semantic_channels = [
            self._channels(DETAIL_CHANNELS[0] * width_multiplier * semantic_ratio * f, "semantic_ratio")
            for f in SEMANTIC_WIDTH_FACTORS
        ]
        detail_depths = [scaled_depth(d, depth_multiplier) for d in DETAIL_DEPTHS]
        semantic_depths = [scaled_depth(d, depth_multiplier) for d in SEMANTIC_DEPTHS]
        features = detail_channels[-1]
        self.detail_branch = (
            DetailBranch(in_channels, detail_channels, detail_depths) if branches != "semantic" else None
        )
        self.semantic_branch = (
            SemanticBranch(in_channels, semantic_channels, semantic_depths, expansion, out_channels=features)
            if branches != "detail"
            else None
        )
        self.aggregation = AGGREGATIONS[aggregation](features) if branches == "both" else None
        self.head = SegmentHead(features, head_channels, num_classes, dropout)
        # Each booster head refines to stride**2 channels before its classifier, as the reference.
        aux_inputs = self.semantic_branch.channels if self.semantic_branch is not None else {}
        self.aux_heads = nn.ModuleDict(
            {
                name: SegmentHead(aux_inputs[name], aux_channels, num_classes, dropout, refine_channels=stride**2)
                for name, stride in V2_AUX_POSITIONS.items()
                if name in aux_heads
            }
        )
        self.reset_parameters()

    @staticmethod
    def _channels(value: float, option: str) -> int:
        channels = round(value)
        if channels < 2 or abs(channels - value) > 1e-6:
            raise ValueError(
                f"BiSeNetV2 {option} gives {value:g} channels; choose it so that every width is a whole number >= 2"
            )
        return channels

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
        size = x.shape[-2:]
        semantic = {}
        if self.semantic_branch is not None:
            check_batch_size(x, self.semantic_branch.context_embedding.norm, type(self).__name__)
            semantic = self.semantic_branch(x)
        if self.branches == "both":
            features = self.aggregation(self.detail_branch(x), semantic["context"])
        elif self.branches == "detail":
            features = self.detail_branch(x)
        else:
            features = semantic["context"]
        logits = self.head(features, size)
        if not self.training:
            return logits
        return (logits, *(head(semantic[name], size) for name, head in self.aux_heads.items()))
