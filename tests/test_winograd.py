"""3x3 layers as Winograd F(4x4, 3x3) in exported files: the rewritten graph computes what the direct one does
(any batch and size, both runtimes), only eligible layers are rewritten, and ``winograd=auto`` keeps what its
measurements say (fake timings: no timing in tests)."""

import re

import numpy as np
import onnx
import pytest
import torch
from synthetic import write_tiny_weights
from torch import nn

from bisenet_pl import precision as precision_module
from bisenet_pl.cli import main
from bisenet_pl.deploy import ExportOptions, compare_with_pytorch, export, export_onnx, load_predictor
from bisenet_pl.deploy.winograd import eligible_convs, winograd_layers, with_winograd
from bisenet_pl.deploy.winograd_choice import choose_winograd_layers, model_runner
from bisenet_pl.errors import ConfigError


def small_network() -> nn.Module:
    """Two eligible 3x3 layers (with and without bias, 8 -> 16 -> 12 channels) after one that is not (stride 2),
    the second followed by a ReLU and a 1x1 classifier (computed with it when it is rewritten)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 12, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(12, 5, 1),
    ).eval()


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    net = small_network()
    path = export_onnx(net, tmp_path_factory.mktemp("winograd") / "small.onnx", ExportOptions(example_size=(32, 48)))
    return net, onnx.load(str(path))


def run(model, backend: str, images: np.ndarray) -> np.ndarray:
    output = model_runner(model, backend, None, images.shape)(images)
    return np.asarray(output[0] if backend == "onnxruntime" else next(iter(output.values())))


def test_only_3x3_stride_1_convolutions_are_eligible(small_onnx):
    _, model = small_onnx
    assert eligible_convs(model) == ["net.2.weight", "net.4.weight"]
    with pytest.raises(ValueError, match=r"not 3x3 stride-1 convolutions of this model: net\.0\.weight"):
        with_winograd(model, ["net.0.weight"])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_rewritten_layers_compute_the_direct_convolution_at_any_batch_and_size(small_onnx, backend):
    net, model = small_onnx
    rewritten = with_winograd(model, eligible_convs(model))
    assert winograd_layers(rewritten) == ["net.2.weight", "net.4.weight"]
    # Left: the stride-2 layer, and each rewritten layer's stride-4 input transform; the classifier after the
    # second went with it (a matrix product before the blocks are put back in place).
    assert [node.input[1] for node in rewritten.graph.node if node.op_type == "Conv"] == [
        "net.0.weight",
        "winograd/net.2.weight/input_transform",
        "winograd/net.4.weight/input_transform",
    ]
    weights = {tensor.name for tensor in rewritten.graph.initializer}
    assert weights.isdisjoint({"net.2.weight", "net.4.weight", "net.6.weight", "net.6.bias"})
    rng = np.random.default_rng(0)
    for shape in [(1, 3, 32, 48), (3, 3, 26, 14), (2, 3, 2, 2), (1, 3, 45, 17)]:  # 2x2 -> a 1x1 map inside
        images = rng.standard_normal(shape, dtype=np.float32)
        with torch.no_grad():
            expected = net(torch.from_numpy(images)).numpy()
        got = run(rewritten, backend, images)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max()), shape


def fake_timings(alone: list[tuple[float, float]], in_file: dict[str, float]):
    """A ``time_alternately`` stand-in: each layer alone gets the next (direct, winograd) seconds of ``alone``, the
    whole file's variants their ``in_file`` seconds (by name: "direct", a layer, "single", "union"); records calls."""
    pairs = iter(alone)
    calls = []

    def measure(steps, *args):
        calls.append(sorted(steps))
        if set(steps) == {"direct", "winograd"}:
            return dict(zip(("direct", "winograd"), next(pairs)))
        return {name: in_file[name] for name in steps}

    measure.calls = calls
    return measure


def choose(model, measure, cache):
    example = np.zeros((1, 3, 32, 48), dtype=np.float32)
    return choose_winograd_layers(model, example, "onnxruntime", measure=measure, cache=cache)


def test_layers_that_win_alone_are_kept_only_where_the_whole_file_is_faster_with_them(small_onnx, tmp_path):
    _, model = small_onnx
    # Both win alone (by 50% and 20%); in the file net.2 saves 10%, net.4 1% (under the 2% asked): net.2 alone.
    measure = fake_timings(
        [(0.010, 0.005), (0.010, 0.008)], {"direct": 0.100, "net.2.weight": 0.090, "net.4.weight": 0.099}
    )
    choice = choose(model, measure, tmp_path / "a.json")
    assert [layer.winograd for layer in choice.layers] == [True, True]
    assert choice.chosen == ["net.2.weight"]
    assert measure.calls[-1] == ["direct", "net.2.weight", "net.4.weight"]  # the file's variants timed in turn
    assert "directly 100 ms, with one of them rewritten: net.2.weight 90 ms, net.4.weight 99 ms" in choice.describe()
    assert choice.describe().endswith("(measured now). Rewritten: net.2.weight")
    again = choose(model, fake_timings([], {}), tmp_path / "a.json")
    assert again.cached and again.chosen == ["net.2.weight"]  # measured once per shape, file and CPU
    # Both help in the file: together only if faster than the better one alone.
    in_file = {"direct": 0.100, "net.2.weight": 0.090, "net.4.weight": 0.095, "single": 0.090, "union": 0.085}
    choice = choose(model, fake_timings([(0.010, 0.005), (0.010, 0.008)], in_file), tmp_path / "b.json")
    assert choice.chosen == ["net.2.weight", "net.4.weight"] and "with all 2 that saved 2% 85 ms" in choice.describe()
    in_file |= {"union": 0.092}
    choice = choose(model, fake_timings([(0.010, 0.005), (0.010, 0.008)], in_file), tmp_path / "c.json")
    assert choice.chosen == ["net.2.weight"]
    # None helps in the file; none wins alone (the file is then not timed).
    in_file = {"direct": 0.100, "net.2.weight": 0.099, "net.4.weight": 0.101}
    choice = choose(model, fake_timings([(0.010, 0.005), (0.010, 0.008)], in_file), tmp_path / "d.json")
    assert choice.chosen == [] and choice.describe().endswith("None saved 2%")
    measure = fake_timings([(0.010, 0.012), (0.010, 0.0098)], {})  # the second wins by 2%, under the 5% asked
    choice = choose(model, measure, tmp_path / "e.json")
    assert choice.chosen == [] and len(measure.calls) == 2 and "none rewritten" in choice.describe()


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_export_with_winograd_auto_writes_what_was_measured_faster(monkeypatch, tmp_path, format):
    monkeypatch.setenv("BISENET_PL_CACHE", str(tmp_path / "cache"))
    # Every layer alone, in the file and together: faster rewritten.
    faster = lambda steps, *args: {name: 0.010 if name in ("direct", "single") else 0.005 for name in steps}  # noqa: E731
    monkeypatch.setattr(precision_module, "time_alternately", faster)
    net, said = small_network(), []
    options = ExportOptions(labels="int32", example_size=(32, 48), winograd="auto")
    path = export(
        net, tmp_path / f"small.{'xml' if format == 'openvino' else 'onnx'}", format, options, say=said.append
    )
    assert said and "2 of 2 3x3 layers ran faster as F(4x4, 3x3) alone" in said[0]
    assert said[0].endswith("Rewritten: net.2.weight, net.4.weight")
    if format == "onnx":
        assert winograd_layers(onnx.load(str(path))) == ["net.2.weight", "net.4.weight"]
        with pytest.raises(ConfigError, match="computes 2 3x3 layers as Winograd"):  # in OpenVINO too
            load_predictor(path, backend="openvino", precision="bf16")
    else:  # two matrix products (over channels, then the output transform) of each rewritten layer
        from bisenet_pl.deploy.runtime import openvino_core

        ops = [op.get_type_name() for op in openvino_core().read_model(str(path)).get_ordered_ops()]
        assert ops.count("MatMul") == 5  # and the classifier's
        # The file says which layers it rewrote: it is for fp32, which auto then takes without timing.
        assert load_predictor(path).winograd_layers == ["net.2.weight", "net.4.weight"]
        with pytest.raises(ConfigError, match="computes 2 3x3 layers as Winograd F.4x4, 3x3., for fp32"):
            load_predictor(path, precision="bf16")
        assert load_predictor(path, precision="auto").config["INFERENCE_PRECISION_HINT"] == "f32"
    assert compare_with_pytorch(net, path, options, (45, 17))["agree"] == 1.0
    assert load_predictor(path).precision == "fp32"


def test_export_command_says_what_winograd_auto_measured(tmp_path, monkeypatch, capsys):
    weights = write_tiny_weights(tmp_path / "tiny.pt")  # a stride-2 body and 1x1 classifiers: nothing eligible
    monkeypatch.setenv("BISENET_PL_CACHE", str(tmp_path / "cache"))
    output = tmp_path / "tiny.xml"
    main(["export", f"--model.pretrained={weights}", "--format=openvino", "--winograd=auto", f"--output={output}",
          "--size", "64", "96"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "winograd=auto: no 3x3 layer of the file at 1x3x64x96 ran faster as F(4x4, 3x3) alone" in printed
    assert output.is_file() and "agrees with PyTorch" in printed


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--precision", "int8"], "--winograd auto times F(4x4, 3x3) layers in fp32"),
        (["--format", "torchscript"], "--winograd auto times F(4x4, 3x3) layers in fp32"),
        (["--format", "openvino", "--precision", "auto"], "--winograd auto is for fp32 files"),
        (["--format", "weights"], "--winograd applies to onnx and openvino files"),
    ],
)
def test_export_command_refuses_winograd_where_it_does_not_apply(tmp_path, arguments, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        main(["export", f"--model.pretrained={tmp_path / 'none.pt'}", "--winograd=auto", *arguments])
