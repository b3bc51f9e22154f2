"""Deployment: a trained network made deployable (:mod:`.network`), written to ONNX, OpenVINO or
TorchScript in fp32, bf16 or int8 (:mod:`.export`, :mod:`.quantize`; 3x3 layers optionally as Winograd's
F(4x4, 3x3) where :mod:`.winograd_choice` measures it faster, :mod:`.winograd`) and run on a CPU (:mod:`.predictor`,
:mod:`.runtime`)."""

from bisenet_pl.batchnorm import recalibrate_batchnorm
from bisenet_pl.deploy.export import (
    EXPORT_SUFFIXES,
    WINOGRAD_SETTINGS,
    ExportFormat,
    ExportOptions,
    compare_with_pytorch,
    describe_comparison,
    export,
    export_onnx,
    export_torchscript,
)
from bisenet_pl.deploy.labels import LABEL_RESOLUTIONS, LabelResolution, append_argmax
from bisenet_pl.deploy.network import (
    IMAGE_INPUTS,
    DeployedNetwork,
    ImageInput,
    LabelDtype,
    deployable,
    example_images,
    fold_batchnorm,
    inference_network,
)
from bisenet_pl.deploy.predictor import BACKENDS, Backend, Precision, Predictor
from bisenet_pl.deploy.quantize import model_input, quantize_onnx
from bisenet_pl.deploy.runtime import load_predictor, onnx_session
from bisenet_pl.hardware import CpuFeatures, cpu_features

__all__ = [
    "BACKENDS", "Backend", "CpuFeatures", "DeployedNetwork", "EXPORT_SUFFIXES", "ExportFormat", "ExportOptions",
    "IMAGE_INPUTS", "ImageInput", "LABEL_RESOLUTIONS", "LabelDtype", "LabelResolution", "Precision", "Predictor",
    "append_argmax", "compare_with_pytorch", "cpu_features", "deployable", "describe_comparison", "example_images",
    "export", "export_onnx", "export_torchscript", "fold_batchnorm", "inference_network", "load_predictor",
    "model_input", "onnx_session", "quantize_onnx", "recalibrate_batchnorm", "WINOGRAD_SETTINGS",
]  # fmt: skip
