"""From a trained network to what an exported file computes: aux heads dropped, BatchNorm folded
into the convolutions, optionally the image normalisation in front and the argmax behind."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bisenet_pl.models.base import SegmentationNetwork

LabelDtype = Literal["int32", "int64"]
#: What an exported file takes: float images normalised as in training (N, 3, H, W), or 8-bit RGB
#: images as read from disk, channels first or last, normalised inside the graph.
ImageInput = Literal["float", "uint8_nchw", "uint8_nhwc"]
IMAGE_INPUTS: tuple[str, ...] = ("float", "uint8_nchw", "uint8_nhwc")


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it, in place (eval mode).

    Two patterns cover both networks: a Sequential whose conv is followed by its BN (ConvBNAct,
    ResNet downsampling) and torchvision-style ``convN``/``bnN`` pairs in ResNet blocks. A BN
    that follows no convolution (the context block's, on pooled features) stays.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a network in eval mode (it folds the running statistics)")
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        names = list(children)
        pairs = []
        if isinstance(parent, nn.Sequential):
            pairs += [(a, b) for a, b in zip(names, names[1:])]
        pairs += [(f"conv{name[2:]}", name) for name in names if name.startswith("bn") and f"conv{name[2:]}" in names]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))  # a child replaced in place, by name
                setattr(parent, bn_name, nn.Identity().eval())
    return module


def inference_network(net: nn.Module, fold: bool = True) -> nn.Module:
    """A copy of ``net`` for deployment: eval mode, no aux heads, BatchNorm folded (``fold``), weights
    in the default memory format (torch.export fails on the shape guards of channels-last weights)."""
    net = copy.deepcopy(net).eval().to(memory_format=torch.contiguous_format)
    if isinstance(net, SegmentationNetwork):
        net.remove_aux_heads()
    if fold:
        fold_batchnorm(net)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


class DeployedNetwork(nn.Module):
    """A network as an exported file runs it: from ``image_input`` images to logits, or to class ids
    of ``labels`` type (the argmax in the graph).

    With 8-bit input the training normalisation (``mean`` and ``std`` of 0-1 RGB values, as the
    DataModule gives them) is part of the graph, computed as albumentations' ``Normalize`` does, so a
    deployment cannot get it wrong.
    """

    def __init__(
        self,
        net: nn.Module,
        labels: LabelDtype | None = None,
        image_input: ImageInput = "float",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {', '.join(IMAGE_INPUTS)}; got {image_input!r}")
        if image_input != "float" and (mean is None or std is None):
            raise ValueError(f"image_input={image_input} needs the training data's mean and std")
        self.net = net
        self.image_input = image_input
        self.labels = {"int32": torch.int32, "int64": torch.int64}[labels] if labels else None
        if image_input != "float":
            self.register_buffer("mean", 255.0 * torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer(
                "inverse_std", 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_input == "uint8_nhwc":
            images = images.permute(0, 3, 1, 2)
        if self.image_input != "float":
            images = (images.float() - self.mean) * self.inverse_std
        logits = self.net(images)
        return logits.argmax(dim=1).to(self.labels) if self.labels is not None else logits


def deployable(net: nn.Module, fold: bool = True, **options) -> DeployedNetwork:
    """An eval-mode :class:`DeployedNetwork` (``options``: its ``labels``, ``image_input``, ``mean``
    and ``std``) around a deployable copy of ``net`` (see :func:`inference_network`)."""
    return DeployedNetwork(inference_network(net, fold=fold), **options).eval()


def input_channels(net: nn.Module) -> int:
    """How many channels the network's first convolution takes."""
    return next(m for m in net.modules() if isinstance(m, nn.Conv2d)).in_channels


def example_images(
    net: nn.Module, size: tuple[int, int], image_input: ImageInput = "float", batch: int = 1, seed: int = 0
) -> torch.Tensor:
    """Random images of ``size`` (H, W) in the layout and type ``image_input`` names."""
    generator = torch.Generator().manual_seed(seed)
    channels, (height, width) = input_channels(net), size
    if image_input == "float":
        return torch.randn(batch, channels, height, width, generator=generator)
    images = torch.randint(0, 256, (batch, height, width, channels), dtype=torch.uint8, generator=generator)
    return images if image_input == "uint8_nhwc" else images.permute(0, 3, 1, 2).contiguous()
