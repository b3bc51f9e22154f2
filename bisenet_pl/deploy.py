"""From a trained network to a deployable one: aux heads dropped, BatchNorm folded into the
convolutions, optionally the argmax in the graph; exported to ONNX or TorchScript."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bisenet_pl.files import atomic_write
from bisenet_pl.errors import ConfigError

LabelDtype = Literal["int32", "int64"]
ExportFormat = Literal["onnx", "torchscript"]


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution into it, in place (eval mode).

    Two patterns cover both networks: a Sequential whose conv is followed by its BN (ConvBNAct,
    ResNet downsampling) and torchvision-style ``convN``/``bnN`` pairs in ResNet blocks. A BN
    that follows no convolution (the context block's, on pooled features) stays.
    """
    if module.training:
        raise ValueError("fold_batchnorm needs a network in eval mode (it folds the running statistics)")
    for parent in module.modules():
        names = list(parent._modules)
        pairs = []
        if isinstance(parent, nn.Sequential):
            pairs += [(a, b) for a, b in zip(names, names[1:])]
        pairs += [(f"conv{name[2:]}", name) for name in names if name.startswith("bn") and f"conv{name[2:]}" in names]
        for conv_name, bn_name in pairs:
            conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                parent._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                parent._modules[bn_name] = nn.Identity().eval()
    return module


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Recompute every BatchNorm's running statistics, in place, as the average over ``batches``
    (image tensors of at least 2 images) of their batch statistics; nothing else changes.

    Statistics gathered on small training crops need not describe full-size images: deep in the
    network a 192x256 crop's feature maps are 6x8 pixels, mostly border. Recomputed on training
    images at the size of inference, they match what the network then sees.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    was_training = net.training
    net.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over all batches
        norm.train()
    seen = 0
    for images in batches:
        net(images)
        seen += 1
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    net.train(was_training)
    if not seen:
        raise ValueError("recalibrate_batchnorm needs at least one batch of images")
    return net


def inference_network(net: nn.Module, fold: bool = True) -> nn.Module:
    """A copy of ``net`` for deployment: eval mode, no aux heads, BatchNorm folded (``fold``), weights
    in the default memory format (torch.export fails on the shape guards of channels-last weights)."""
    net = copy.deepcopy(net).eval().to(memory_format=torch.contiguous_format)
    if isinstance(getattr(net, "aux_heads", None), nn.ModuleDict):
        net.aux_heads = nn.ModuleDict()
    if fold:
        fold_batchnorm(net)
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


class LabelOutput(nn.Module):
    """The network with the argmax in the graph: (N, H, W) class ids instead of (N, C, H, W) logits."""

    def __init__(self, net: nn.Module, dtype: LabelDtype = "int64") -> None:
        super().__init__()
        self.net = net
        self.dtype = {"int32": torch.int32, "int64": torch.int64}[dtype]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).argmax(dim=1).to(self.dtype)


def example_images(net: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """One random image of ``size`` with as many channels as the network's first convolution takes."""
    first_conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    return torch.randn(1, first_conv.in_channels, *size)


def deployable(net: nn.Module, labels: LabelDtype | None = None, fold: bool = True) -> nn.Module:
    network = inference_network(net, fold=fold)
    return LabelOutput(network, labels).eval() if labels else network


def export_onnx(
    net: nn.Module,
    path: str | Path,
    example_size: tuple[int, int] = (512, 1024),
    labels: LabelDtype | None = None,
    opset: int = 18,
) -> Path:
    """Export to ONNX with dynamic batch, height and width (input ``images``, output ``logits`` or ``labels``)."""
    model = deployable(net, labels)
    images = example_images(net, example_size)
    batch, height, width = (torch.export.Dim(name, min=1) for name in ("batch", "height", "width"))
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (images,),
            input_names=["images"],
            output_names=["labels" if labels else "logits"],
            dynamic_shapes=({0: batch, 2: height, 3: width},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    with atomic_write(path) as partial:
        program.save(str(partial), external_data=False)
    return path


def export_torchscript(
    net: nn.Module, path: str | Path, example_size: tuple[int, int] = (512, 1024), labels: LabelDtype | None = None
) -> Path:
    """Trace to TorchScript; sizes follow the input (the traced graph reads them from it)."""
    model = deployable(net, labels)
    images = example_images(net, example_size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, images, check_trace=False)
    path = Path(path)
    with atomic_write(path) as partial:
        traced.save(str(partial))
    return path


def export(
    net: nn.Module,
    path: str | Path,
    format: ExportFormat = "onnx",
    example_size: tuple[int, int] = (512, 1024),
    labels: LabelDtype | None = None,
) -> Path:
    if format == "onnx":
        return export_onnx(net, path, example_size, labels)
    if format == "torchscript":
        return export_torchscript(net, path, example_size, labels)
    raise ConfigError(f"export format must be onnx or torchscript, got {format!r}")


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with all graph optimisations."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_matches_pytorch(net: nn.Module, path: str | Path, size: tuple[int, int], labels: LabelDtype | None = None) -> str:
    """Run the exported file and the PyTorch network on one random image; describe the difference."""
    images = example_images(net, size)
    (output,) = onnx_session(path).run(None, {"images": images.numpy()})
    with torch.no_grad():
        expected = copy.deepcopy(net).eval()(images)
    if labels:
        agreement = (torch.from_numpy(output).long() == expected.argmax(dim=1)).float().mean().item()
        return f"{100 * agreement:.3f}% of pixels get the same class"
    return f"max |logit difference| {(torch.from_numpy(output) - expected).abs().max().item():.2e}"
