"""3x3 convolutions of an exported file as Winograd's minimal filtering F(4x4, 3x3), in standard ONNX operators.

A direct 3x3 convolution costs 9 multiply-adds per output and input channel; F(4x4, 3x3) computes each 4x4
block of outputs from a 6x6 block of inputs with 36, 2.25 per output (Lavin and Gray, "Fast Algorithms for
Convolutional Neural Networks", CVPR 2016). Written as a graph (a fixed stride-4 convolution for the input
transform, 36 matrix products over channels, a matrix product for the output transform, reshapes) it runs in
any runtime and takes any batch and image size, at the price of moving the transformed blocks through memory
and putting the output blocks back in place. That pays where a runtime's direct convolution is at the CPU's
arithmetic limit on a wide layer: BiSeNetV2's head, 128 to 1024 channels, whose ReLU and 1x1 classifier are
computed before the blocks are put back, so that 11 channels move instead of 1024 (on a 2-core AVX2 Zen 2 at
512x1024 the whole file 277 -> 226 ms in ONNX Runtime, 282 -> 228 ms in OpenVINO). On narrow layers it does
not pay, so :func:`choose_winograd_layers` decides by timing, alone and in the file, on this machine.

The transforms use the points 0, +-1, +-2 and infinity; in float32 a layer's result differs from the direct
convolution's by about 1e-5 of its scale. It is for float32 inference: bf16 or int8 arithmetic in the
transforms would lose more than the layer's own rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

TILE = 4  # outputs per block side
BLOCK = TILE + 2  # inputs per block side (a 3x3 kernel)
#: The ONNX node names of a rewritten layer start with this, followed by the convolution's weight name.
NODE_PREFIX = "winograd/"

# F(4, 3) on the points 0, 1, -1, 2, -2 and infinity.
INPUT_TRANSFORM = np.array(  # B^T
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=np.float64,
)
KERNEL_TRANSFORM = np.array(  # G
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
OUTPUT_TRANSFORM = np.array(  # A^T
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 2, -2, 0],
        [0, 1, 1, 4, 4, 0],
        [0, 1, -1, 8, -8, 1],
    ],
    dtype=np.float64,
)


def conv_attributes(node) -> dict:
    from onnx import helper

    return {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}


def eligible_convs(model) -> list[str]:
    """The weight names of the ONNX model's convolutions that F(4x4, 3x3) computes: 3x3 kernels given as
    initializers, stride 1, padding 1, no dilation, no groups."""
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        attributes = conv_attributes(node)
        if (
            list(weights[node.input[1]].dims[2:]) == [3, 3]
            and attributes.get("group", 1) == 1
            and list(attributes.get("strides", [1, 1])) == [1, 1]
            and list(attributes.get("dilations", [1, 1])) == [1, 1]
            and list(attributes.get("pads", [0, 0, 0, 0])) == [1, 1, 1, 1]
            and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
        ):
            names.append(node.input[1])
    return names


def winograd_nodes(
    node,
    weight: np.ndarray,
    bias: np.ndarray | None,
    pointwise: tuple[np.ndarray, np.ndarray | None, str] | None = None,
) -> tuple[list, list]:
    """The nodes and initializers that compute the Conv ``node`` (``weight`` of shape (out, in, 3, 3),
    optional ``bias``) as F(4x4, 3x3), from its input to its output name. ``pointwise``: a ReLU and a 1x1
    convolution (its weight, bias and output name) that follow, computed before the blocks are put back in
    place (a head's classifier: only its few channels are then moved)."""
    from onnx import helper, numpy_helper

    out_channels, in_channels = weight.shape[:2]
    final_channels = out_channels if pointwise is None else pointwise[0].shape[0]
    prefix = NODE_PREFIX + node.input[1]
    name = lambda part: f"{prefix}/{part}"  # noqa: E731
    transformed = np.einsum("ak,oikl,bl->aboi", KERNEL_TRANSFORM, weight.astype(np.float64), KERNEL_TRANSFORM)
    input_blocks = np.einsum("ak,bl->abkl", INPUT_TRANSFORM, INPUT_TRANSFORM).reshape(BLOCK * BLOCK, 1, BLOCK, BLOCK)
    output_blocks = np.einsum("ia,jb->ijab", OUTPUT_TRANSFORM, OUTPUT_TRANSFORM).reshape(TILE * TILE, BLOCK * BLOCK)
    constants = {
        "weight": transformed.reshape(BLOCK * BLOCK, out_channels, in_channels).astype(np.float32),
        "input_transform": input_blocks.astype(np.float32),
        "output_transform": output_blocks.astype(np.float32),
        "pads": np.array([0, 0, 1, 1, 0, 0, TILE, TILE], dtype=np.int64),  # enough for ceil(H / 4) blocks
        "axes_hw": np.array([2, 3], dtype=np.int64),
        "one_column": np.array([-1, 1], dtype=np.int64),
        "channel_blocks": np.array([-1, in_channels, BLOCK * BLOCK], dtype=np.int64),
        "by_position": np.array([BLOCK * BLOCK, in_channels, -1], dtype=np.int64),
        "positions": np.array([BLOCK * BLOCK, -1], dtype=np.int64),
        "by_channel": np.array([TILE * TILE, out_channels, -1], dtype=np.int64),
        "tiles": np.array([TILE, TILE, final_channels, -1], dtype=np.int64),
        "tile": np.array([TILE], dtype=np.int64),
        "batch_channels": np.array([0, 0], dtype=np.int64),  # Reshape: keep N and out; Slice: start at 0
    }
    if bias is not None:
        constants["bias"] = bias.astype(np.float32).reshape(out_channels, 1)
    if pointwise is not None:
        constants["pointwise"] = pointwise[0].astype(np.float32).reshape(final_channels, out_channels)
        if pointwise[1] is not None:
            constants["pointwise_bias"] = pointwise[1].astype(np.float32).reshape(final_channels, 1)
    initializers = [numpy_helper.from_array(value, name(key)) for key, value in constants.items()]
    c = name  # constants and intermediate values share the prefix
    x, y = node.input[0], node.output[0] if pointwise is None else pointwise[2]
    nodes = [
        helper.make_node("Pad", [x, c("pads")], [c("padded")], name=c("pad")),
        helper.make_node("Shape", [c("padded")], [c("padded_hw")], start=2, name=c("padded_shape")),
        helper.make_node("Concat", [c("one_column"), c("padded_hw")], [c("planes_shape")], axis=0, name=c("concat0")),
        helper.make_node("Reshape", [c("padded"), c("planes_shape")], [c("planes")], name=c("planes")),
        helper.make_node(
            "Conv", [c("planes"), c("input_transform")], [c("blocks")], strides=[TILE, TILE], name=c("input_conv")
        ),
        helper.make_node("Shape", [c("blocks")], [c("grid")], start=2, name=c("grid_shape")),  # (rows, cols)
        helper.make_node("ReduceProd", [c("grid")], [c("count")], keepdims=1, name=c("count")),
        helper.make_node("Concat", [c("channel_blocks"), c("count")], [c("v_shape")], axis=0, name=c("concat1")),
        helper.make_node("Reshape", [c("blocks"), c("v_shape")], [c("v")], name=c("v")),  # (N, in, 36, blocks)
        helper.make_node("Transpose", [c("v")], [c("v_t")], perm=[2, 1, 0, 3], name=c("v_t")),
        helper.make_node("Reshape", [c("v_t"), c("by_position")], [c("v_m")], name=c("v_m")),  # (36, in, N*blocks)
        helper.make_node("MatMul", [c("weight"), c("v_m")], [c("products")], name=c("products")),  # (36, out, .)
        helper.make_node("Reshape", [c("products"), c("positions")], [c("products_2d")], name=c("products_2d")),
        helper.make_node("MatMul", [c("output_transform"), c("products_2d")], [c("outputs")], name=c("outputs")),
        helper.make_node("Reshape", [c("outputs"), c("by_channel")], [c("z")], name=c("z")),  # (16, out, N*blocks)
    ]
    z = c("z")
    if bias is not None:
        nodes.append(helper.make_node("Add", [z, c("bias")], [c("z_bias")], name=c("bias_add")))
        z = c("z_bias")
    if pointwise is not None:
        nodes.append(helper.make_node("Relu", [z], [c("z_relu")], name=c("relu")))
        nodes.append(helper.make_node("MatMul", [c("pointwise"), c("z_relu")], [c("z_pw")], name=c("pointwise")))
        z = c("z_pw")
        if pointwise[1] is not None:
            nodes.append(helper.make_node("Add", [z, c("pointwise_bias")], [c("z_pw_bias")], name=c("pw_bias_add")))
            z = c("z_pw_bias")
    nodes += [
        helper.make_node("Concat", [c("tiles"), c("grid")], [c("o_shape")], axis=0, name=c("concat2")),
        helper.make_node("Reshape", [z, c("o_shape")], [c("o")], name=c("o")),  # (4, 4, channels, N, r, c)
        helper.make_node("Transpose", [c("o")], [c("o_t")], perm=[3, 2, 4, 0, 5, 1], name=c("o_t")),
        helper.make_node("Mul", [c("grid"), c("tile")], [c("out_hw")], name=c("out_hw")),
        helper.make_node("Concat", [c("batch_channels"), c("out_hw")], [c("y_shape")], axis=0, name=c("concat3")),
        helper.make_node("Reshape", [c("o_t"), c("y_shape")], [c("y_full")], name=c("y_full")),
        helper.make_node("Shape", [x], [c("hw")], start=2, name=c("input_shape")),
        helper.make_node("Slice", [c("y_full"), c("batch_channels"), c("hw"), c("axes_hw")], [y], name=c("crop")),
    ]
    return nodes, initializers


def with_winograd(model, layers: Iterable[str]):
    """A copy of the ONNX ``model`` whose convolutions named by their weights in ``layers`` (see
    :func:`eligible_convs`) are computed as F(4x4, 3x3); a ReLU and a 1x1 convolution that alone follow one
    are computed with it (:func:`winograd_nodes`)."""
    from onnx import numpy_helper

    layers = set(layers)
    unknown = layers - set(eligible_convs(model))
    if unknown:
        raise ValueError(f"not 3x3 stride-1 convolutions of this model: {', '.join(sorted(unknown))}")
    model = copy.deepcopy(model)
    graph = model.graph
    tensors = {tensor.name: tensor for tensor in graph.initializer}
    array = lambda name: numpy_helper.to_array(tensors[name]) if name else None  # noqa: E731
    rewritten = [node for node in graph.node if node.op_type == "Conv" and node.input[1:2] and node.input[1] in layers]
    absorbed, replacements, unused = set(), {}, set()
    for node in rewritten:
        pointwise = following_pointwise(graph, node, tensors)
        if pointwise is not None:
            relu, conv = pointwise
            absorbed.update((id(relu), id(conv)))
            unused.update(conv.input[1:])
            inputs = list(conv.input) + [""]
            pointwise = (array(conv.input[1]), array(inputs[2]), conv.output[0])
        inputs = list(node.input) + [""]
        replacements[id(node)] = winograd_nodes(node, array(node.input[1]), array(inputs[2]), pointwise)
        unused.update(node.input[1:])
    nodes = []
    for node in graph.node:
        if id(node) in replacements:
            replacement, constants = replacements[id(node)]
            nodes += replacement
            graph.initializer.extend(constants)
        elif id(node) not in absorbed:
            nodes.append(node)
    still_used = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name not in unused or tensor.name in still_used]
    nodes = [copy.deepcopy(node) for node in nodes]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def following_pointwise(graph, conv, tensors) -> tuple | None:
    """The Relu and 1x1 convolution (stride 1, no groups, no padding, weights given) that alone take
    ``conv``'s output in turn, if they do and neither output is one of the graph's; else None."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {output.name for output in graph.output}
    after = consumers.get(conv.output[0], [])
    if len(after) != 1 or after[0].op_type != "Relu" or conv.output[0] in outputs:
        return None
    relu = after[0]
    after = consumers.get(relu.output[0], [])
    if len(after) != 1 or after[0].op_type != "Conv" or relu.output[0] in outputs:
        return None
    pointwise = after[0]
    attributes = conv_attributes(pointwise)
    if (
        len(pointwise.input) < 2
        or pointwise.input[1] not in tensors
        or list(tensors[pointwise.input[1]].dims[2:]) != [1, 1]
        or attributes.get("group", 1) != 1
        or list(attributes.get("strides", [1, 1])) != [1, 1]
        or any(attributes.get("pads", [0, 0, 0, 0]))
        or attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
    ):
        return None
    return relu, pointwise


def winograd_layers(model) -> list[str]:
    """The layers (weight names) of an ONNX model that :func:`with_winograd` rewrote."""
    return sorted(
        {
            node.name[len(NODE_PREFIX) :].rsplit("/", 1)[0]
            for node in model.graph.node
            if node.name.startswith(NODE_PREFIX)
        }
    )


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

    from bisenet_pl.deploy.runtime import onnx_session

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
        from bisenet_pl.deploy.runtime import openvino_core

        core = openvino_core()
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        network = core.read_model(model.SerializeToString(), b"")
        network.reshape({0: list(shape)})
        compiled = core.compile_model(network, "CPU", config)
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})
    from bisenet_pl.deploy.runtime import onnx_session

    session = onnx_session(model.SerializeToString(), threads)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def runtime_version(backend: str) -> str:
    if backend == "openvino":
        from bisenet_pl.deploy.runtime import import_openvino

        return f"openvino {import_openvino().__version__}"
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


def fastest_conv_algorithms(
    model,
    example: np.ndarray,
    backend: str,
    threads: int | None = None,
    measure: Callable[[dict[str, Callable[[], object]]], dict[str, float]] | None = None,
    cache=None,
) -> list[LayerChoice]:
    """For each 3x3 convolution of the ONNX ``model`` F(4x4, 3x3) computes, whether it runs faster so than
    directly in ``backend`` on this CPU, timed alone on the input it gets from ``example`` (an input of the
    model), both ways in turn (:func:`bisenet_pl.precision.time_alternately` with a budget of
    :data:`LAYER_BUDGET_S` each, or ``measure``). Measured once per layer shape, CPU, runtime and thread count
    (the cache of :mod:`bisenet_pl.precision`)."""
    from onnx import numpy_helper

    from bisenet_pl.precision import measured_step_ms, this_cpu, time_alternately

    layers = eligible_convs(model)
    shapes = conv_input_shapes(model, layers, example)
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    timing = measure or (lambda steps: time_alternately(steps, LAYER_BUDGET_S, LAYER_TIMED_STEPS))
    choices = []
    for layer in layers:
        weight = numpy_helper.to_array(weights[layer])
        shape = shapes[layer]
        key = (
            f"conv3x3 {runtime_version(backend)} | {this_cpu()} | {threads or 'all'} threads | "
            f"{'x'.join(map(str, shape))} -> {weight.shape[0]}"
        )

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
    measure: Callable[[dict[str, Callable[[], object]]], dict[str, float]] | None = None,
    cache=None,
) -> WinogradChoice:
    """The layers of the ONNX ``model`` to compute as F(4x4, 3x3) in ``backend`` on this CPU, by measuring:
    each eligible layer alone (:func:`fastest_conv_algorithms`) proposes; the whole file on ``example``
    with each proposed layer rewritten, against the direct file, all in turn, decides (each must save
    :data:`FILE_MARGIN`; on a 2-core Zen 2, eight of the nine layers that won alone in ONNX Runtime made the
    file slower); where several help, all of them together are kept only if faster than the best one."""
    from bisenet_pl.precision import time_alternately

    layers = fastest_conv_algorithms(model, example, backend, threads, measure, cache)
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
    model, variants: dict[str, list[str]], example: np.ndarray, backend: str, threads, timing, cache
) -> tuple[dict[str, float], bool]:
    """Milliseconds of the whole ``model`` on ``example`` with each variant's layers rewritten, timed in turn
    (cached per file, variants, CPU, runtime, threads and size), and whether they come from the cache."""
    import hashlib

    from bisenet_pl.precision import measured_step_ms, this_cpu

    digest = hashlib.sha1(model.SerializeToString())
    digest.update(repr(sorted(variants.items())).encode())
    shape = "x".join(map(str, example.shape))
    key = (
        f"winograd file {runtime_version(backend)} | {this_cpu()} | {threads or 'all'} threads | "
        f"{digest.hexdigest()[:16]} | {shape}"
    )

    def steps() -> dict[str, Callable[[], object]]:
        runs = {}
        for name, layers in variants.items():
            run = model_runner(with_winograd(model, layers) if layers else model, backend, threads, example.shape)
            runs[name] = lambda run=run: run(example)
        return runs

    milliseconds, cached, _ = measured_step_ms(key, steps, tuple(variants), timing, cache)
    return milliseconds, cached
