"""What a predictor of an exported file is, whichever runtime runs it (:mod:`.runtime` has the two)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from bisenet_pl.errors import ConfigError

Backend = Literal["onnxruntime", "openvino"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino")
#: Precisions a runtime computes in. int8 is a property of the file (quantized at export), fp32 and
#: bf16 a choice of OpenVINO's at load time (ONNX Runtime's CPU kernels compute fp32).
Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def backend_for(path: str | Path, backend: Backend | None = None) -> Backend:
    """``backend``, or the one a file's suffix implies: OpenVINO for ``.xml``, ONNX Runtime for ``.onnx``."""
    suffix = Path(path).suffix.lower()
    if backend is None:
        if suffix not in (".onnx", ".xml"):
            hint = ""
            if suffix in (".pt", ".pth", ".ckpt", ".safetensors"):
                hint = " (a weights file or checkpoint: bisenet-pl export --format openvino makes one of it)"
            raise ConfigError(f"{path}: expected an exported .onnx or OpenVINO .xml file{hint}")
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
    quantized: bool  # whether the file holds int8 layers (export --precision int8)
    path: str | Path
    input_dtype: np.dtype  # of the file's input: uint8 (8-bit images as read) or float32 (normalised)
    channels_last: bool  # the file's input layout: (N, H, W, 3) or (N, 3, H, W)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def check_input(self, images: np.ndarray) -> None:
        """A batch the file takes, else one :class:`ConfigError` saying what it takes (not the runtime's
        message about ranks and dimensions)."""
        layout = "(N, H, W, 3)" if self.channels_last else "(N, 3, H, W)"
        shape = getattr(images, "shape", ())
        fits = (
            isinstance(images, np.ndarray)
            and images.dtype == self.input_dtype
            and len(shape) == 4
            and shape[3 if self.channels_last else 1] == 3
            and min(shape) > 0
        )
        if not fits:
            got = f"an array {tuple(shape)} of {images.dtype}" if isinstance(images, np.ndarray) else type(images)
            raise ConfigError(
                f"{self.path} takes a batch of images {layout} of {np.dtype(self.input_dtype).name} (see bisenet-pl "
                f"export --input); got {got}"
            )

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each batch's output, in order (frames of a video, images of a folder): one batch at a time
        here; OpenVINO loaded with ``throughput=True`` keeps several in flight."""
        for batch in batches:
            yield self(batch)

    def describe(self) -> str:
        return f"{self.backend} {self.precision}"
