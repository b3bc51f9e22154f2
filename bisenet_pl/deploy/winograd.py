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
not pay, so :func:`bisenet_pl.deploy.winograd_choice.choose_winograd_layers` decides by timing, alone and in the
file, on this machine.

The transforms use the points 0, +-1, +-2 and infinity; in float32 a layer's result differs from the direct
convolution's by about 1e-5 of its scale. It is for float32 inference: bf16 or int8 arithmetic in the
transforms would lose more than the layer's own rounding.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

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


def plain_conv(node, weights: dict, kernel: int, padding: int) -> bool:
    """Whether ONNX ``node`` is a convolution with a ``kernel`` x ``kernel`` weight among ``weights`` (the
    initializers), stride 1, no dilation, no groups and ``padding`` on every side."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
        return False
    attributes = conv_attributes(node)
    return (
        list(weights[node.input[1]].dims[2:]) == [kernel, kernel]
        and attributes.get("group", 1) == 1
        and list(attributes.get("strides", [1, 1])) == [1, 1]
        and list(attributes.get("dilations", [1, 1])) == [1, 1]
        and list(attributes.get("pads", [0, 0, 0, 0])) == [padding] * 4
        and attributes.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET")
    )


def eligible_convs(model) -> list[str]:
    """The weight names of the ONNX model's convolutions that F(4x4, 3x3) computes: 3x3 kernels given as
    initializers, stride 1, padding 1, no dilation, no groups."""
    weights = {tensor.name: tensor for tensor in model.graph.initializer}
    return [node.input[1] for node in model.graph.node if plain_conv(node, weights, kernel=3, padding=1)]


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

    def c(part: str) -> str:  # constants, intermediate values and nodes, all under the layer's prefix
        return f"{prefix}/{part}"

    initializers = [numpy_helper.from_array(value, c(key)) for key, value in constants.items()]
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
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {output.name for output in graph.output}
    absorbed, replacements, unused = set(), {}, set()
    for node in rewritten:
        pointwise = following_pointwise(node, consumers, outputs, tensors)
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


def following_pointwise(conv, consumers: dict, outputs: set, tensors: dict) -> tuple | None:
    """The Relu and 1x1 convolution (stride 1, no groups, no padding, weights given) that alone take
    ``conv``'s output in turn (``consumers``: the nodes taking each value), if they do and neither output is
    one of the graph's ``outputs``; else None."""
    after = consumers.get(conv.output[0], [])
    if len(after) != 1 or after[0].op_type != "Relu" or conv.output[0] in outputs:
        return None
    relu = after[0]
    after = consumers.get(relu.output[0], [])
    if len(after) != 1 or relu.output[0] in outputs or not plain_conv(after[0], tensors, kernel=1, padding=0):
        return None
    return relu, after[0]


def rewritten_layers(names: Iterable[str]) -> list[str]:
    """The layers (weight names) :func:`with_winograd` rewrote, from the names of a graph's nodes: an ONNX
    model's, or the operations OpenVINO reads from one (it keeps them, also in the IR it writes)."""
    return sorted({name[len(NODE_PREFIX) :].split("/", 1)[0] for name in names if name.startswith(NODE_PREFIX)})


def winograd_layers(model) -> list[str]:
    """The layers (weight names) of an ONNX model that :func:`with_winograd` rewrote."""
    return rewritten_layers(node.name for node in model.graph.node)
