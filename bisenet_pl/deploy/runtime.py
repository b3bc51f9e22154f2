"""Running exported files on the CPU with ONNX Runtime or OpenVINO (what the CPU offers them: bisenet_pl.hardware)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from bisenet_pl.errors import ConfigError

Backend = Literal["onnxruntime", "openvino"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")
#: Precisions a runtime computes in. int8 is a property of the file (quantized at export), fp32 and
#: bf16 a choice of OpenVINO's at load time (ONNX Runtime's CPU kernels compute fp32).
Precision = Literal["fp32", "bf16", "int8"]
OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}
#: Where an OpenVINO file written by bisenet-pl export keeps the inference precision it was exported
#: for (OpenVINO's own default depends on the CPU: bf16 wherever it is native).
PRECISION_RT_INFO = ["bisenet_pl", "inference_precision"]


def backend_for(path: str | Path, backend: Backend | None = None) -> Backend:
    """``backend``, or the one a file's suffix implies: OpenVINO for ``.xml``, ONNX Runtime for ``.onnx``."""
    suffix = Path(path).suffix.lower()
    if backend is None:
        if suffix not in (".onnx", ".xml"):
            raise ConfigError(f"{path}: expected an exported .onnx or OpenVINO .xml file")
        return "openvino" if suffix == ".xml" else "onnxruntime"
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "onnxruntime" and suffix != ".onnx":
        raise ConfigError(f"{path}: ONNX Runtime runs .onnx files; use the openvino backend for OpenVINO IR")
    return backend


class Predictor:
    """An exported file loaded in a CPU runtime: ``predictor(images)`` runs a batch (a numpy array in
    the file's input layout and type) and returns its output (logits or class ids)."""

    backend: Backend
    precision: str  # what the runtime computes in; found when first asked, not at load

    def __call__(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.backend} {self.precision}"


class OnnxRuntimePredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = path
        self.session = onnx_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    @cached_property
    def precision(self) -> str:
        import onnx

        nodes = onnx.load(str(self.path), load_external_data=False).graph.node
        return "int8" if any(node.op_type in ("QuantizeLinear", "QLinearConv") for node in nodes) else "fp32"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session with all graph optimisations."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OpenVinoPredictor(Predictor):
    """OpenVINO on the CPU. The model is compiled for each input shape it meets (static shapes run
    faster than a dynamic compilation); ``precision`` overrides the file's own inference precision."""

    backend = "openvino"

    def __init__(self, path: str | Path, precision: Precision | None = None, threads: int | None = None) -> None:
        openvino = import_openvino()
        self.core = openvino.Core()
        self.model = self.core.read_model(str(path))
        if precision is None and self.model.has_rt_info(PRECISION_RT_INFO):
            precision = self.model.get_rt_info(PRECISION_RT_INFO).astype(str)
        self.config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        if precision in OPENVINO_PRECISION:
            self.config["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION[precision]
        elif precision not in (None, "int8"):
            raise ConfigError(f"OpenVINO precision must be fp32 or bf16; got {precision!r}")
        self.requests: dict[tuple[int, ...], object] = {}

    @cached_property
    def precision(self) -> str:
        """What OpenVINO compiles the file to on this CPU, asked of a small compilation of it."""
        shape = self.model.inputs[0].get_partial_shape()
        channels_last = shape[3].is_static and shape[3].get_length() in (1, 3)
        example = (1, 64, 64, shape[3].get_length()) if channels_last else (1, shape[1].get_length(), 64, 64)
        computes = self.compiled(example).get_property("INFERENCE_PRECISION_HINT").to_string()
        computes = {"f32": "fp32", "f16": "fp16"}.get(computes, computes)
        quantized = any(op.get_type_name() == "FakeQuantize" for op in self.model.get_ops())
        return f"int8+{computes}" if quantized else computes

    def compiled(self, shape: tuple[int, ...]):
        model = self.model.clone()
        model.reshape({model.inputs[0]: list(shape)})
        return self.core.compile_model(model, "CPU", self.config)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        request = self.requests.get(images.shape)
        if request is None:
            request = self.requests[images.shape] = self.compiled(images.shape).create_infer_request()
        return request.infer({0: images})[0]


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise ConfigError("the OpenVINO backend needs the openvino package: pip install 'bisenet-pl[deploy]'") from None
    return openvino


def load_predictor(
    path: str | Path, backend: Backend | None = None, precision: Precision | None = None, threads: int | None = None
) -> Predictor:
    """The exported file at ``path`` loaded for CPU inference (see :class:`Predictor`).

    ``backend`` defaults to the file's (OpenVINO for ``.xml``); OpenVINO also runs ``.onnx`` files.
    ``precision`` (OpenVINO only) overrides the precision stored in the file: ``fp32`` for results
    that match PyTorch, ``bf16`` on CPUs that compute it natively (:func:`cpu_features`).
    """
    backend = backend_for(path, backend)
    if not Path(path).is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if backend == "openvino":
        return OpenVinoPredictor(path, precision, threads)
    if precision not in (None, "fp32", "int8"):
        raise ConfigError(f"ONNX Runtime computes a file in fp32 (or int8 if quantized); {precision} needs --backend openvino")
    return OnnxRuntimePredictor(path, threads)
