"""Writing a deployable network to a file: ONNX (dynamic batch and size), OpenVINO IR or TorchScript,
in fp32, bf16 (an OpenVINO inference precision stored in the file) or int8 (calibrated), and
checking the file against PyTorch."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from bisenet_pl.compat import ONNX_REGISTRATION_LOGGER
from bisenet_pl.deploy.labels import LabelResolution, append_argmax, check_label_resolution
from bisenet_pl.deploy.network import ImageInput, LabelDtype, deployable, example_images
from bisenet_pl.deploy.predictor import Backend, Precision
from bisenet_pl.deploy.quantize import quantize_onnx
from bisenet_pl.deploy.runtime import PRECISION_RT_INFO, import_openvino, load_predictor
from bisenet_pl.deploy.winograd import with_winograd
from bisenet_pl.deploy.winograd_choice import choose_winograd_layers
from bisenet_pl.errors import ConfigError
from bisenet_pl.files import atomic_write

ExportFormat = Literal["onnx", "openvino", "torchscript"]
#: How the file computes its 3x3 convolutions: directly, or some as F(4x4, 3x3) where that measures faster
#: on this machine (:mod:`bisenet_pl.deploy.winograd`).
Winograd = Literal["off", "auto"]
WINOGRAD_SETTINGS: tuple[str, ...] = ("off", "auto")
#: The file suffix of each format (OpenVINO writes a .bin of weights beside the .xml).
EXPORT_SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".torchscript.pt"}


@dataclass(frozen=True)
class ExportOptions:
    """What the exported file takes and gives, and what it computes in."""

    labels: LabelDtype | None = None  # class ids of this type instead of logits
    image_input: ImageInput = "float"
    mean: Sequence[float] | None = None  # of 0-1 RGB values; needed by 8-bit input
    std: Sequence[float] | None = None
    precision: Precision = "fp32"
    example_size: tuple[int, int] = (512, 1024)  # for tracing; the file takes any size
    label_resolution: LabelResolution = "full"  # half: the argmax at half size, ids repeated 2x2 (faster)
    winograd: Winograd = "off"  # auto: 3x3 layers as F(4x4, 3x3) where that times faster here (fp32 files)

    def __post_init__(self) -> None:
        check_label_resolution(self.label_resolution, self.labels)
        if self.image_input != "float" and (self.mean is None or self.std is None):
            raise ConfigError(
                f"8-bit input ({self.image_input}) needs the training data's mean and std: give the training config"
            )

    def network(self, net: nn.Module) -> nn.Module:
        return deployable(net, labels=self.labels, image_input=self.image_input, mean=self.mean, std=self.std)


def export_onnx(net: nn.Module, path: str | Path, options: ExportOptions = ExportOptions(), opset: int = 18) -> Path:
    """Export to fp32 ONNX with dynamic batch, height and width (input ``images``, output ``logits``
    or ``labels``) as ``options`` say."""
    model = ExportOptions(None, options.image_input, options.mean, options.std).network(
        net
    )  # the argmax is added below
    images = example_images(net, options.example_size, options.image_input)
    spatial = (1, 2) if options.image_input == "uint8_nhwc" else (2, 3)
    dynamic = {0: torch.export.Dim.DYNAMIC, spatial[0]: torch.export.Dim.DYNAMIC, spatial[1]: torch.export.Dim.DYNAMIC}
    # torch's exporter logs a line for each torchvision operator it cannot register: noise here.
    registration = logging.getLogger(ONNX_REGISTRATION_LOGGER)
    level = registration.level
    registration.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (images,),
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=(dynamic,),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    registration.setLevel(level)
    onnx_model = program.model_proto
    if options.labels:
        onnx_model = append_argmax(onnx_model, options.labels, options.label_resolution)
    return save_onnx(onnx_model, path)


def save_onnx(model, path: str | Path) -> Path:
    import onnx

    path = Path(path)
    with atomic_write(path) as partial:
        onnx.save(model, str(partial))
    return path


def export_torchscript(net: nn.Module, path: str | Path, options: ExportOptions = ExportOptions()) -> Path:
    """Trace to TorchScript; sizes follow the input (the traced graph reads them from it)."""
    model = options.network(net)
    images = example_images(net, options.example_size, options.image_input)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, images, check_trace=False)
    path = Path(path)
    with atomic_write(path) as partial:
        traced.save(str(partial))
    return path


def save_openvino(model, path: Path) -> Path:
    """Write OpenVINO IR (``path`` .xml and its .bin), weights uncompressed, both files or neither."""
    openvino = import_openvino()
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".bisenet-export-", dir=path.parent) as scratch:
        staged = Path(scratch) / "model.xml"
        openvino.save_model(model, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(staged, path)  # the .xml last: it is what a reader opens
    return path


def check_format(format: str, precision: str, label_resolution: str = "full", winograd: str = "off") -> None:
    """Refuse a format, precision, label resolution and Winograd setting that do not go together, before any
    work is done."""
    if winograd not in WINOGRAD_SETTINGS:
        raise ConfigError(f"--winograd must be one of {', '.join(WINOGRAD_SETTINGS)}; got {winograd!r}")
    if winograd == "auto" and (format not in ("onnx", "openvino") or precision != "fp32"):
        raise ConfigError(
            f"--winograd auto times F(4x4, 3x3) layers in fp32 ONNX Runtime or OpenVINO files; got --format {format} "
            f"--precision {precision} (its transforms would lose accuracy in bf16 or int8)"
        )
    if format not in EXPORT_SUFFIXES:
        raise ConfigError(f"export format must be one of {', '.join(EXPORT_SUFFIXES)}; got {format!r}")
    if precision not in ("fp32", "bf16", "int8"):
        raise ConfigError(f"export precision must be fp32, bf16 or int8; got {precision!r}")
    if format == "torchscript" and precision != "fp32":
        raise ConfigError(f"TorchScript export is fp32; {precision} needs --format onnx or openvino")
    if format == "torchscript" and label_resolution != "full":
        raise ConfigError(f"--label_resolution {label_resolution} is for --format onnx or openvino, not torchscript")
    if format == "onnx" and precision == "bf16":
        raise ConfigError(
            "bf16 is an OpenVINO inference precision: use --format openvino (ONNX Runtime's CPU kernels are fp32 or "
            "int8)"
        )


def export(
    net: nn.Module,
    path: str | Path,
    format: ExportFormat = "onnx",
    options: ExportOptions = ExportOptions(),
    calibration: Iterable[np.ndarray] | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Export ``net`` as ``format`` to ``path`` as ``options`` say (the one way to give them). int8
    needs ``calibration``: RGB uint8 HxWx3 training images (a few hundred); bf16 is OpenVINO's. ``say``
    (default: a log line) is told what ``winograd="auto"`` measured and chose."""
    path = Path(path)
    check_format(format, options.precision, options.label_resolution, options.winograd)
    if format == "torchscript":
        return export_torchscript(net, path, options=options)
    if options.precision == "int8" and calibration is None:
        raise ConfigError(
            "int8 needs calibration images: give --calibration (a data config or a folder of training images)"
        )
    if format == "onnx" and options.precision == "fp32" and options.winograd == "off":
        return export_onnx(net, path, options=options)
    import onnx

    # Intermediate files beside the output: the last one is moved into place, never copied.
    with tempfile.TemporaryDirectory(prefix=".bisenet-export-", dir=path.parent) as scratch:
        logits = replace(options, labels=None, label_resolution="full")
        onnx_path = export_onnx(net, Path(scratch) / "float.onnx", options=logits)
        if options.precision == "int8":
            mean, std = options.mean or (0, 0, 0), options.std or (1, 1, 1)
            onnx_path = save_onnx(
                quantize_onnx(onnx_path, calibration, options.image_input, mean, std), Path(scratch) / "int8.onnx"
            )
        if options.winograd == "auto":
            onnx_path = save_onnx(
                measured_winograd(net, onnx.load(str(onnx_path)), format, options, say), Path(scratch) / "winograd.onnx"
            )
        if options.labels:
            onnx_path = save_onnx(
                append_argmax(onnx.load(str(onnx_path)), options.labels, options.label_resolution),
                Path(scratch) / "labels.onnx",
            )
        if format == "onnx":
            os.replace(onnx_path, path)
            return path
        model = import_openvino().convert_model(str(onnx_path))
        # What load_predictor computes the file in: an int8 file's float layers stay fp32.
        model.set_rt_info("bf16" if options.precision == "bf16" else "fp32", PRECISION_RT_INFO)
        return save_openvino(model, path)


def measured_winograd(net: nn.Module, model, format: str, options: ExportOptions, say: Callable[[str], None] | None):
    """The ONNX ``model`` with the 3x3 layers that compute faster as F(4x4, 3x3) in the format's runtime on
    this machine, at the example size, so rewritten (see :func:`.winograd_choice.choose_winograd_layers`)."""
    example = example_images(net, options.example_size, options.image_input).numpy()
    choice = choose_winograd_layers(model, example, "openvino" if format == "openvino" else "onnxruntime")
    (say or logging.getLogger(__name__).info)(choice.describe())
    return with_winograd(model, choice.chosen) if choice.chosen else model


def compare_with_pytorch(
    net: nn.Module, path: str | Path, options: ExportOptions, size: tuple[int, int], backend: Backend | None = None
) -> dict[str, float]:
    """Run the exported file and the PyTorch network (fp32) on one random image of ``size``:
    ``max_abs_diff`` of the logits and their ``scale`` (max |logit|), or for class ids the share of
    pixels that ``agree``."""
    predictor = load_predictor(path, backend)
    images = example_images(net, size, options.image_input)
    output = torch.from_numpy(np.asarray(predictor(images.numpy())))
    with torch.no_grad():
        expected = ExportOptions(None, options.image_input, options.mean, options.std).network(net)(images)
    if options.labels:
        return {"agree": (output.long() == expected.argmax(dim=1)).float().mean().item()}
    return {"max_abs_diff": (output - expected).abs().max().item(), "scale": expected.abs().max().item()}


def describe_comparison(comparison: dict[str, float]) -> str:
    if "agree" in comparison:
        return f"{100 * comparison['agree']:.3f}% of pixels get the same class"
    return f"max |logit difference| {comparison['max_abs_diff']:.2e} (logits up to {comparison['scale']:.2f})"
