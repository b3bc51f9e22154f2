"""Which 3x3 layers of an exported file to compute as Winograd F(4x4, 3x3) (:mod:`.winograd`) on this CPU, by
timing them in the file's runtime: each eligible layer alone proposes, the whole file with each proposed layer
rewritten decides. Timings are taken in turn (:func:`bisenet_pl.precision.time_alternately`) and cached with
the precision choices (:mod:`bisenet_pl.precision`)."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bisenet_pl.deploy.runtime import measured_where, onnx_session, openvino_core
from bisenet_pl.deploy.winograd import eligible_convs, winograd_nodes, with_winograd
from bisenet_pl.precision import Measure


@dataclass(frozen=True)
class LayerChoice:
    layer: str  # the convolution's weight name
    shape: tuple[int, ...]  # its input at the measured size (N, C, H, W)
    out_channels: int
    step_ms: dict[str, float]  # "direct" and "winograd"
    cached: bool

    @property
    def winograd(self) -> bool:
        return self.step_ms["winograd"] <= (1 - WINOGRAD_MARGIN) * self.step_ms["direct"]

    def describe(self) -> str:
        _, channels, height, width = self.shape
        chosen = "winograd" if self.winograd else "direct"
        direct, winograd = self.step_ms["direct"], self.step_ms["winograd"]
        return (
            f"{self.layer} ({channels}->{self.out_channels}, {height}x{width}): direct {direct:.1f} ms, "
            f"winograd {winograd:.1f} ms -> {chosen}"
        )


#: How much faster F(4x4, 3x3) must time for a layer to be rewritten (its result is not the direct one's bits).
WINOGRAD_MARGIN = 0.05

#: Seconds of timing per layer (both ways, alternately), and the timed runs wanted of each within them.
LAYER_BUDGET_S = 1.5
LAYER_TIMED_STEPS = 5


def conv_input_shapes(model, layers: list[str], example: np.ndarray) -> dict[str, tuple[int, ...]]:
    """The input shape of each convolution named in ``layers`` when the model runs ``example`` (found by
    running it once in ONNX Runtime with those inputs as extra outputs)."""
    import onnx

    probe = copy.deepcopy(model)
    inputs = {
        node.input[1]: node.input[0] for node in probe.graph.node if node.op_type == "Conv" and len(node.input) > 1
    }
    wanted = [inputs[layer] for layer in layers]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in dict.fromkeys(wanted))
    session = onnx_session(probe.SerializeToString())
    values = dict(
        zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: example}))
    )
    return {layer: tuple(values[inputs[layer]].shape) for layer in layers}


def single_conv_model(weight: np.ndarray, shape: tuple[int, ...], winograd: bool):
    """A model of one 3x3 "same" convolution of ``weight`` on inputs of ``shape``: direct or F(4x4, 3x3)."""
    from onnx import TensorProto, helper, numpy_helper

    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], name="conv")
    output_shape = [shape[0], weight.shape[0], *shape[2:]]
    if winograd:
        nodes, constants = winograd_nodes(conv, weight, None)
    else:
        nodes, constants = [conv], [numpy_helper.from_array(weight.astype(np.float32), "w")]
    graph = helper.make_graph(
        nodes,
        "conv3x3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        constants,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def model_runner(model, backend: str, threads: int | None, shape: tuple[int, ...]) -> Callable[[np.ndarray], object]:
    """The one-input ``model`` loaded in ``backend`` (ONNX Runtime, or OpenVINO in fp32 compiled for inputs of
    ``shape``, as its predictor compiles) as a function of its input."""
    if backend == "openvino":
        core = openvino_core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        network = core.read_model(model.SerializeToString(), b"")
        network.reshape({0: list(shape)})
        compiled = core.compile_model(network, "CPU", config)
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})
    session = onnx_session(model.SerializeToString(), threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def fastest_conv_algorithms(
    model, example: np.ndarray, backend: str, threads: int | None, timing: Measure, cache
) -> list[LayerChoice]:
    """For each 3x3 convolution of the ONNX ``model`` F(4x4, 3x3) computes, whether it runs faster so than
    directly in ``backend`` on this CPU, timed alone on the input it gets from ``example`` (an input of the
    model), both ways in turn by ``timing``. Measured once per layer shape, CPU, runtime and thread count (the
    cache of :mod:`bisenet_pl.precision`)."""
    from onnx import numpy_helper

    from bisenet_pl.precision import measured_step_ms

    layers = eligible_convs(model)
    shapes = conv_input_shapes(model, layers, example)
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    choices = []
    for layer in layers:
        weight = numpy_helper.to_array(weights[layer])
        shape = shapes[layer]
        key = f"conv3x3 {measured_where(backend, threads)} | {'x'.join(map(str, shape))} -> {weight.shape[0]}"

        def steps(weight=weight, shape=shape) -> dict[str, Callable[[], object]]:
            x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
            runs = {}
            for algorithm in ("direct", "winograd"):
                run = model_runner(single_conv_model(weight, shape, algorithm == "winograd"), backend, threads, shape)
                runs[algorithm] = lambda run=run: run(x)
            return runs

        step_ms, cached, _ = measured_step_ms(key, steps, ("direct", "winograd"), timing, cache)
        choices.append(LayerChoice(layer, shape, int(weight.shape[0]), step_ms, cached))
    return choices


@dataclass(frozen=True)
class WinogradChoice:
    """Which layers of a file F(4x4, 3x3) computes, and the timings that chose them."""

    layers: list[LayerChoice]  # each eligible layer timed alone
    file_ms: dict[str, float]  # the whole file: "direct", and with each layer that won alone rewritten
    union_ms: dict[str, float]  # where several helped in the file: the best one alone ("single") and all ("union")
    cached: bool
    what: str

    @property
    def helpful(self) -> list[str]:
        """The layers whose rewriting alone saved :data:`FILE_MARGIN` of the whole file's time."""
        if not self.file_ms:
            return []
        direct = self.file_ms["direct"]
        return [name for name, ms in self.file_ms.items() if name != "direct" and ms <= (1 - FILE_MARGIN) * direct]

    @property
    def chosen(self) -> list[str]:
        """The helpful layers, all of them if together they ran faster than the best one alone, else that one."""
        helpful = self.helpful
        if len(helpful) > 1 and self.union_ms["union"] >= self.union_ms["single"]:
            return [min(helpful, key=self.file_ms.__getitem__)]
        return helpful

    def describe(self) -> str:
        candidates = [layer.layer for layer in self.layers if layer.winograd]
        source = "measured earlier on this machine" if self.cached else "measured now"
        if not candidates:
            return (
                f"winograd=auto: no 3x3 layer of {self.what} ran faster as F(4x4, 3x3) alone ({source}); none rewritten"
            )
        direct = self.file_ms["direct"]
        each = ", ".join(f"{name} {self.file_ms[name]:.0f} ms" for name in candidates)
        line = (
            f"winograd=auto: {len(candidates)} of {len(self.layers)} 3x3 layers ran faster as F(4x4, 3x3) alone; "
            f"{self.what} directly {direct:.0f} ms, with one of them rewritten: {each}"
        )
        if self.union_ms:
            line += f"; with all {len(self.helpful)} that saved {FILE_MARGIN:.0%} {self.union_ms['union']:.0f} ms"
        chosen = self.chosen
        line += (
            f" ({source}). Rewritten: {', '.join(chosen)}" if chosen else f" ({source}). None saved {FILE_MARGIN:.0%}"
        )
        return line


#: How much of the whole file's time a layer's rewriting must save to be kept (timed in the file: a layer
#: timed alone also pays the layout changes around it, which the file does not).
FILE_MARGIN = 0.02


def choose_winograd_layers(
    model,
    example: np.ndarray,
    backend: str,
    threads: int | None = None,
    measure: Measure | None = None,
    cache=None,
) -> WinogradChoice:
    """The layers of the ONNX ``model`` to compute as F(4x4, 3x3) in ``backend`` on this CPU, by measuring:
    each eligible layer alone (:func:`fastest_conv_algorithms`, by default :func:`time_alternately` with a budget
    of :data:`LAYER_BUDGET_S` a layer) proposes; the whole file on ``example``
    with each proposed layer rewritten, against the direct file, all in turn, decides (each must save
    :data:`FILE_MARGIN`; on a 2-core Zen 2, eight of the nine layers that won alone in ONNX Runtime made the
    file slower); where several help, all of them together are kept only if faster than the best one."""
    from bisenet_pl.precision import time_alternately

    by_layer = measure or (lambda steps: time_alternately(steps, LAYER_BUDGET_S, LAYER_TIMED_STEPS))
    layers = fastest_conv_algorithms(model, example, backend, threads, by_layer, cache)
    candidates = [layer.layer for layer in layers if layer.winograd]
    what = f"the file at {'x'.join(map(str, example.shape))}"
    cached = all(layer.cached for layer in layers)
    if not candidates:
        return WinogradChoice(layers, {}, {}, cached, what)
    timing = measure or time_alternately
    variants = {"direct": [], **{layer: [layer] for layer in candidates}}
    file_ms, file_cached = timed_files(model, variants, example, backend, threads, timing, cache)
    choice = WinogradChoice(layers, file_ms, {}, cached and file_cached, what)
    helpful = choice.helpful
    if len(helpful) < 2:
        return choice
    best = min(helpful, key=file_ms.__getitem__)
    union_ms, union_cached = timed_files(
        model, {"single": [best], "union": helpful}, example, backend, threads, timing, cache
    )
    return WinogradChoice(layers, file_ms, union_ms, choice.cached and union_cached, what)


def timed_files(
    model,
    variants: dict[str, list[str]],
    example: np.ndarray,
    backend: str,
    threads: int | None,
    timing: Measure,
    cache,
) -> tuple[dict[str, float], bool]:
    """Milliseconds of the whole ``model`` on ``example`` with each variant's layers rewritten, timed in turn
    (cached per file, variants, CPU, runtime, threads and size), and whether they come from the cache."""
    from bisenet_pl.precision import measured_step_ms

    digest = hashlib.sha1(model.SerializeToString())
    digest.update(repr(sorted(variants.items())).encode())
    shape = "x".join(map(str, example.shape))
    key = f"winograd file {measured_where(backend, threads)} | {digest.hexdigest()[:16]} | {shape}"

    def steps() -> dict[str, Callable[[], object]]:
        runs = {}
        for name, layers in variants.items():
            run = model_runner(with_winograd(model, layers) if layers else model, backend, threads, example.shape)
            runs[name] = lambda run=run: run(example)
        return runs

    milliseconds, cached, _ = measured_step_ms(key, steps, tuple(variants), timing, cache)
    return milliseconds, cached
