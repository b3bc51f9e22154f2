"""Running exported files on the CPU with ONNX Runtime or OpenVINO (what the CPU offers them: bisenet_pl.hardware):
the two predictors, OpenVINO's measured precision, and :func:`load_predictor`."""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from functools import cache, cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from bisenet_pl.deploy.predictor import PRECISIONS, Backend, Precision, Predictor, backend_for
from bisenet_pl.deploy.winograd import rewritten_layers
from bisenet_pl.errors import ConfigError
from bisenet_pl.precision import Measure, PrecisionChoice, choose_fastest, measured_step_ms, this_cpu

OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}
#: Where an OpenVINO file written by bisenet-pl export keeps the inference precision it was exported
#: for (OpenVINO's own default depends on the CPU: bf16 wherever it is native).
PRECISION_RT_INFO = ["bisenet_pl", "inference_precision"]
#: The image size ``precision="auto"`` times a file at unless told (the papers' 512x1024).
AUTO_EXAMPLE_SIZE = (512, 1024)


class OnnxRuntimePredictor(Predictor):
    backend = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = path
        try:
            self.session = onnx_session(path, threads)
        except Exception as error:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"{path} is not a model ONNX Runtime can load (truncated, or another kind of file): {reason}"
            ) from None
        spec = self.session.get_inputs()[0]
        self.input_name = spec.name
        self.input_dtype = np.dtype(np.uint8 if spec.type == "tensor(uint8)" else np.float32)
        self.channels_last = spec.shape[3] == 3

    @cached_property
    def quantized(self) -> bool:
        """Whether the file holds int8 layers (written by ``bisenet-pl export --precision int8``)."""
        import onnx

        nodes = onnx.load(str(self.path), load_external_data=False).graph.node
        return any(node.op_type in ("QuantizeLinear", "QLinearConv") for node in nodes)

    @cached_property
    def precision(self) -> str:
        return "int8" if self.quantized else "fp32"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.check_input(images)
        return self.session.run(None, {self.input_name: images})[0]


def onnx_session(path: str | Path | bytes, threads: int | None = None):
    """An onnxruntime CPU session with all graph optimisations, of a file or a serialized model."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    model = path if isinstance(path, bytes) else str(path)
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OpenVinoPredictor(Predictor):
    """OpenVINO on the CPU. The model is compiled for each input shape it meets (static shapes run
    faster than a dynamic compilation); ``precision`` overrides the file's own inference precision.
    ``throughput=True`` compiles for images per second rather than the latency of one (OpenVINO's
    THROUGHPUT hint: several streams, each on a share of the cores), for :meth:`map`."""

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        precision: Precision | None = None,
        threads: int | None = None,
        throughput: bool = False,
    ) -> None:
        self.core = openvino_core()
        weights = Path(path).with_suffix(".bin")
        if Path(path).suffix.lower() == ".xml" and not weights.is_file():
            raise ConfigError(
                f"{path}: its weights {weights} are missing (OpenVINO IR is the .xml and the .bin beside it)"
            )
        try:
            self.model = self.core.read_model(str(path))
        except RuntimeError:
            raise ConfigError(f"{path} is not a model OpenVINO can read (truncated, or another kind of file)") from None
        if precision is None and self.model.has_rt_info(PRECISION_RT_INFO):
            precision = self.model.get_rt_info(PRECISION_RT_INFO).astype(str)
        if precision == "bf16" and self.winograd_layers:
            raise ConfigError(
                f"{path} computes {len(self.winograd_layers)} 3x3 layers as Winograd F(4x4, 3x3), for fp32 (its "
                "transforms would lose accuracy in bf16): load it in fp32, or export without --winograd for bf16"
            )
        self.config: dict[str, object] = {"PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = threads
        if precision in OPENVINO_PRECISION:
            self.config["INFERENCE_PRECISION_HINT"] = OPENVINO_PRECISION[precision]
        elif precision not in (None, "int8"):
            raise ConfigError(f"OpenVINO precision must be fp32 or bf16; got {precision!r}")
        self.compilations: dict[tuple[int, ...], object] = {}
        self.requests: dict[tuple[int, ...], object] = {}
        self.path = path
        spec = self.model.inputs[0]
        self.input_dtype = np.dtype(np.uint8 if spec.get_element_type().to_string() == "u8" else np.float32)
        last = spec.get_partial_shape()[3]
        self.channels_last = last.is_static and last.get_length() == 3

    def input_shape(self, height: int, width: int, batch: int = 1) -> tuple[int, int, int, int]:
        """The file's input shape for images of ``height`` x ``width`` (its layout: NHWC or NCHW)."""
        return (batch, height, width, 3) if self.channels_last else (batch, 3, height, width)

    def example_input(self, height: int, width: int) -> np.ndarray:
        """A random image batch of one, in the file's layout and input type."""
        images = np.random.default_rng(0).integers(0, 256, self.input_shape(height, width), dtype=np.uint8)
        return (
            images if self.model.inputs[0].get_element_type().to_string() == "u8" else images.astype(np.float32) / 255
        )

    @cached_property
    def precision(self) -> str:
        """What OpenVINO compiles the file to on this CPU, asked of a small compilation of it."""
        computes = self.compiled(self.input_shape(64, 64)).get_property("INFERENCE_PRECISION_HINT").to_string()
        computes = {"f32": "fp32", "f16": "fp16"}.get(computes, computes)
        return f"int8+{computes}" if self.quantized else computes

    @cached_property
    def quantized(self) -> bool:
        """Whether the file holds int8 layers (written by ``bisenet-pl export --precision int8``)."""
        return any(op.get_type_name() == "FakeQuantize" for op in self.model.get_ops())

    @cached_property
    def winograd_layers(self) -> list[str]:
        """The 3x3 layers the file computes as Winograd F(4x4, 3x3) (``export --winograd auto``), by its
        operations' names."""
        return rewritten_layers(op.get_friendly_name() for op in self.model.get_ops())

    def compiled(self, shape: tuple[int, ...]):
        model = self.model.clone()
        model.reshape({model.inputs[0]: list(shape)})
        return self.core.compile_model(model, "CPU", self.config)

    def compiled_for(self, shape: tuple[int, ...]):
        """The model compiled for input ``shape``, once per shape."""
        if shape not in self.compilations:
            self.compilations[shape] = self.compiled(shape)
        return self.compilations[shape]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.check_input(images)
        request = self.requests.get(images.shape)
        if request is None:
            request = self.requests[images.shape] = self.compiled_for(images.shape).create_infer_request()
        # The input is read in place (the call returns only when it is done); the output is copied out.
        return request.infer({0: images}, share_inputs=True)[0]

    def map(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Each batch's output in order, with as many batches in flight as the compilation has requests
        (``OPTIMAL_NUMBER_OF_INFER_REQUESTS``: one per stream); a batch of another shape first waits for
        those in flight. Requests are reused in turn and waited for in the order they started (no Python
        callbacks: OpenVINO's threads never wait for the interpreter)."""
        in_flight: deque = deque()
        requests: list = []
        shape, turn = None, 0
        for batch in batches:
            self.check_input(batch)
            if batch.shape != shape:
                while in_flight:
                    yield finished_output(in_flight.popleft())
                compiled = self.compiled_for(batch.shape)
                count = compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
                requests, shape, turn = [compiled.create_infer_request() for _ in range(count)], batch.shape, 0
            request = requests[turn % len(requests)]
            if len(in_flight) == len(requests):  # all busy: this request is the oldest in flight
                yield finished_output(in_flight.popleft())
            request.start_async({0: batch})  # the input is copied: the caller may reuse its array
            in_flight.append(request)
            turn += 1
        while in_flight:
            yield finished_output(in_flight.popleft())


def finished_output(request) -> np.ndarray:
    """The output of an OpenVINO request started with ``start_async``, once it is done (a copy)."""
    request.wait()
    return request.get_output_tensor(0).data.copy()


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise ConfigError("the OpenVINO backend needs the openvino package: pip install 'bisenet-pl[deploy]'") from None
    return openvino


@cache
def openvino_core():
    """The one OpenVINO Core of the process, kept to its end. Each Core loads a CPU plugin of its own, which
    points the loading thread's alternate signal stack at memory of its own and, when the Core is freed, back
    at the stack it found there: two Cores freed in the order they were made (two predictors, the first
    dropped first) left the thread's stack pointing at unmapped memory, and the next signal handled on that
    thread (Ctrl-C, or a child process ending under PyTorch's DataLoader handler) killed Python with SIGSEGV."""
    return import_openvino().Core()


def measured_where(backend: Backend, threads: int | None) -> str:
    """What a timing in ``backend`` depends on besides the file, as the start of its cache key: the runtime and its
    version, the CPU, the thread count."""
    if backend == "openvino":
        version = import_openvino().__version__
    else:
        import onnxruntime

        version = onnxruntime.__version__
    return f"{backend} {version} | {this_cpu()} | {threads or 'all'} threads"


def fastest_openvino_precision(
    path: str | Path,
    threads: int | None = None,
    size: tuple[int, int] = AUTO_EXAMPLE_SIZE,
    measure: Measure | None = None,
    cache: Path | None = None,
) -> PrecisionChoice:
    """fp32 or bf16, whichever OpenVINO runs the file at ``path`` faster in on this CPU at ``size``
    (an int8 file's float layers), measured once per file, CPU, OpenVINO version and size (see
    :mod:`bisenet_pl.precision`); bf16 must win by 10% to be chosen over fp32's exact results."""
    path = Path(path)
    digest = hashlib.sha1(path.read_bytes())
    weights = path.with_suffix(".bin")
    if weights.is_file():
        digest.update(weights.read_bytes())
    key = f"{measured_where('openvino', threads)} | {digest.hexdigest()[:16]} | {size[0]}x{size[1]}"

    def steps() -> dict[str, Callable[[], object]]:
        runs = {}
        for precision in OPENVINO_PRECISION:
            predictor = OpenVinoPredictor(path, precision, threads)
            images = predictor.example_input(*size)
            runs[precision] = lambda predictor=predictor, images=images: predictor(images)
        return runs

    step_ms, cached, busy_share = measured_step_ms(key, steps, tuple(OPENVINO_PRECISION), measure, cache)
    what = f"{path.name} in OpenVINO at {size[0]}x{size[1]}"
    return PrecisionChoice(
        choose_fastest(step_ms), step_ms, what, cached, setting="precision=auto", busy_share=busy_share
    )


def load_predictor(
    path: str | Path,
    backend: Backend | None = None,
    precision: Precision | Literal["auto"] | None = None,
    threads: int | None = None,
    auto_size: tuple[int, int] = AUTO_EXAMPLE_SIZE,
    throughput: bool = False,
) -> Predictor:
    """The exported file at ``path`` loaded for CPU inference (see :class:`Predictor`).

    ``backend`` defaults to the file's (OpenVINO for ``.xml``); OpenVINO also runs ``.onnx`` files.
    ``precision`` (OpenVINO only) overrides the precision stored in the file: ``fp32`` for results
    that match PyTorch, ``bf16``, or ``auto``: whichever of the two measures faster on this CPU at
    ``auto_size`` (:func:`fastest_openvino_precision`; said in a log line). ONNX Runtime computes a
    file in fp32, or int8 where it was quantized: ``auto`` takes that. ``throughput=True`` (OpenVINO)
    compiles for images per second over many images, run through ``predictor.map(batches)``.
    """
    backend = backend_for(path, backend)
    if precision not in (None, "auto", *PRECISIONS):
        raise ConfigError(f"precision must be fp32, bf16, int8 or auto (None: the file's own); got {precision!r}")
    if threads is not None and threads < 0:
        raise ConfigError(f"threads must be >= 1 (or None or 0: every core); got {threads}")
    if len(auto_size) != 2 or min(auto_size) < 1:
        raise ConfigError(f"auto_size must be (height, width), each >= 1; got {tuple(auto_size)}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if backend == "openvino":
        if precision != "auto":
            return not_quantized_refused(OpenVinoPredictor(path, precision, threads, throughput), precision)
        fp32 = OpenVinoPredictor(path, "fp32", threads, throughput)  # read once; kept unless bf16 wins
        if fp32.winograd_layers:
            logging.getLogger(__name__).info(f"precision=auto: fp32 ({path} computes Winograd layers, for fp32)")
            return fp32
        choice = fastest_openvino_precision(path, threads, auto_size)
        logging.getLogger(__name__).info(choice.describe())
        return fp32 if choice.precision == "fp32" else OpenVinoPredictor(path, choice.precision, threads, throughput)
    if throughput:
        raise ConfigError(
            f"{path}: throughput mode is OpenVINO's: load_predictor(path, backend='openvino', throughput=True)"
        )
    if precision == "auto":
        precision = None
    if precision not in (None, "fp32", "int8"):
        raise ConfigError(
            f"{path}: ONNX Runtime computes a file in fp32 (or int8 if quantized); {precision} needs OpenVINO: "
            "load_predictor(path, backend='openvino', ...)"
        )
    return not_quantized_refused(OnnxRuntimePredictor(path, threads), precision)


def not_quantized_refused(predictor: Predictor, precision: str | None) -> Predictor:
    """The predictor, unless int8 was asked of a float file (which would run in float without a word)."""
    if precision == "int8" and not predictor.quantized:
        raise ConfigError(
            f"{predictor.path} is not quantized: int8 needs a file that bisenet-pl export --precision int8 wrote"
        )
    return predictor
