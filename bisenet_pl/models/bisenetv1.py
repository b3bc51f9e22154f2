"""BiSeNet V1 (Yu et al., ECCV 2018), as implemented by the reference CoinCheung/BiSeNet.

Context path: a ResNet with attention refinement on its 1/16 and 1/32 features and a global
average-pooled context, merged top-down by nearest upsampling and 3x3 convs. Spatial path:
three stride-2 convs to 1/8. A feature fusion module joins the two. Following the reference
release, the fusion attention is a 1x1 conv + BN (not the paper's two-layer MLP) and every
classifier has a bias.

The paper's ablations are constructor options whose defaults are the reference network: the
spatial path, attention refinement and global context can each be switched off, the fusion
can be a plain sum, and the context path can be ResNet-18/34/50/101.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from bisenet_pl.models.base import SegmentationNetwork
from bisenet_pl.models.layers import ConvBNAct, SegmentHead, check_batch_size, resize_to
from bisenet_pl.models.resnet import IMAGENET_URLS, ResNet, ResNetName, load_backbone_weights

#: Auxiliary head positions in forward-output order: the context path's 1/8 and 1/16 outputs.
V1_AUX_POSITIONS: tuple[str, ...] = ("context8", "context16")


class AttentionRefinement(nn.Module):
    """3x3 ConvBNReLU, then channel attention from the pooled feature (1x1 conv + BN + sigmoid)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 3)
        self.attention = ConvBNAct(out_channels, out_channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * torch.sigmoid(self.attention(x.mean(dim=(2, 3), keepdim=True)))


class ContextPath(nn.Module):
    """ResNet trunk with attention refinement and global context, merged top-down to 1/8.

    Without ``attention_refinement`` the refinement is its 3x3 conv alone; without
    ``global_context`` nothing pooled is added to the 1/32 features.
    """

    def __init__(
        self,
        backbone: ResNetName = "resnet18",
        channels: int = 128,
        in_channels: int = 3,
        attention_refinement: bool = True,
        global_context: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = ResNet(backbone, in_channels)
        _, channels16, channels32 = self.backbone.feature_channels
        refinement = AttentionRefinement if attention_refinement else ConvBNAct
        self.refine16 = refinement(channels16, channels)
        self.refine32 = refinement(channels32, channels)
        self.global_context = ConvBNAct(channels32, channels, 1) if global_context else None
        self.upsample32_conv = ConvBNAct(channels, channels, 3)
        self.upsample16_conv = ConvBNAct(channels, channels, 3)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the context features at 1/8 and 1/16."""
        feat8, feat16, feat32 = self.backbone(x)
        refined32 = self.refine32(feat32)
        if self.global_context is not None:
            refined32 = refined32 + self.global_context(feat32.mean(dim=(2, 3), keepdim=True))
        up32 = resize_to(refined32, feat16.shape[-2:], mode="nearest")
        context16 = self.upsample32_conv(up32)
        up16 = resize_to(self.refine16(feat16) + context16, feat8.shape[-2:], mode="nearest")
        context8 = self.upsample16_conv(up16)
        return context8, context16


class SpatialPath(nn.Module):
    """Three stride-2 convs (7x7, 3x3, 3x3) to 1/8, then a 1x1 projection."""

    def __init__(self, in_channels: int = 3, channels: int = 64, out_channels: int = 128) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_channels, channels, 7, stride=2)
        self.conv2 = ConvBNAct(channels, channels, 3, stride=2)
        self.conv3 = ConvBNAct(channels, channels, 3, stride=2)
        self.project = ConvBNAct(channels, out_channels, 1)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.conv3(self.conv2(self.conv1(x))))


class FeatureFusion(nn.Module):
    """Concatenate, 1x1 ConvBNReLU, then reweight channels by a pooled attention (residual)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.fuse = ConvBNAct(in_channels, out_channels, 1)
        self.attention = ConvBNAct(out_channels, out_channels, 1, act=False)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.fuse(torch.cat([spatial, context], dim=1))
        return x + x * torch.sigmoid(self.attention(x.mean(dim=(2, 3), keepdim=True)))


class SumFusion(nn.Module):
    """Ablation baseline for the feature fusion module: the element-wise sum of both paths."""

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return spatial + context


class BiSeNetV1(SegmentationNetwork):
    """BiSeNet V1 for semantic segmentation.

    Args:
        num_classes: number of output classes.
        backbone: context-path ResNet (``resnet18`` as the reference, or 34/50/101).
        aux_heads: auxiliary heads to build, any of ``context8`` and ``context16`` (the
            context path's 1/8 and 1/16 outputs); forward returns them in that order.
        in_channels: input image channels.
        spatial_path: build the spatial path; without it the head sits on the context path's
            1/8 output and there is no fusion.
        attention_refinement: refine the 1/16 and 1/32 features with attention (ARM);
            without it only the ARM's 3x3 conv remains.
        global_context: add the globally pooled 1/32 context to the refined 1/32 features.
        fusion: ``ffm`` (the feature fusion module) or ``sum`` (the two paths added).

    ImageNet weights for the backbone are loaded explicitly, never in the constructor:
    ``model.load_backbone_weights("imagenet" | path | url)``.

    Forward returns ``(main, *aux)`` logits in training mode and the main logits alone in
    eval mode; every output has the input's spatial size, whatever that size is.
    """

    #: Modules trained at the head learning rate (10x in the reference recipe, fusion included).
    head_modules = ("fusion", "head", "aux_heads")

    def __init__(
        self,
        num_classes: int,
        backbone: ResNetName = "resnet18",
        aux_heads: Sequence[str] = V1_AUX_POSITIONS,
        in_channels: int = 3,
        spatial_path: bool = True,
        attention_refinement: bool = True,
        global_context: bool = True,
        fusion: Literal["ffm", "sum"] = "ffm",
    ) -> None:
        super().__init__(num_classes)
        self.check_aux_heads(aux_heads, V1_AUX_POSITIONS)
        if fusion not in ("ffm", "sum"):
            raise ValueError(f"BiSeNetV1 fusion must be ffm or sum, got {fusion!r}")
        self.context_path = ContextPath(
            backbone, in_channels=in_channels, attention_refinement=attention_refinement, global_context=global_context
        )
        context_channels = self.context_path.out_channels
        self.spatial_path = SpatialPath(in_channels, out_channels=context_channels) if spatial_path else None
        if not spatial_path:
            self.fusion, head_in = None, context_channels
        elif fusion == "ffm":
            head_in = self.spatial_path.out_channels + context_channels
            self.fusion = FeatureFusion(head_in, head_in)
        else:
            self.fusion, head_in = SumFusion(), context_channels
        self.head = SegmentHead(head_in, 256, num_classes, dropout=0.0)
        self.aux_heads = nn.ModuleDict(
            {
                name: SegmentHead(self.context_path.out_channels, 64, num_classes, dropout=0.0)
                for name in V1_AUX_POSITIONS
                if name in aux_heads
            }
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The reference's init outside the backbone: Kaiming-normal with a=1, zero biases."""
        self.context_path.backbone.reset_parameters()
        for name, module in self.named_modules():
            if name.startswith("context_path.backbone"):
                continue
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=1)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _pooled_norm(self) -> nn.BatchNorm2d | None:
        """A BatchNorm over a globally pooled (1x1) map, which a batch of one cannot train."""
        context = self.context_path
        for module in (context.global_context, context.refine32, self.fusion):
            attention = getattr(module, "attention", module)
            if (
                isinstance(attention, ConvBNAct)
                and isinstance(attention.bn, nn.BatchNorm2d)
                and attention.conv.kernel_size == (1, 1)
            ):
                return attention.bn
        return None

    def backbone_weights_url(self, source: str) -> str:
        return IMAGENET_URLS[self.context_path.backbone.name] if source == "imagenet" else source

    def load_backbone_weights(self, source: str | Path) -> None:
        """Load ImageNet ResNet weights: ``"imagenet"``, a local path or a URL."""
        load_backbone_weights(self.context_path.backbone, source)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        pooled_norm = self._pooled_norm()
        if pooled_norm is not None:
            check_batch_size(x, pooled_norm, type(self).__name__)
        size = x.shape[-2:]
        context8, context16 = self.context_path(x)
        features = context8 if self.spatial_path is None else self.fusion(self.spatial_path(x), context8)
        logits = self.head(features, size)
        if not self.training:
            return logits
        features = {"context8": context8, "context16": context16}
        return (logits, *(head(features[name], size) for name, head in self.aux_heads.items()))
