"""CPU deployment: each backend and precision exports, loads and predicts; 8-bit input with the
normalisation inside equals normalising by hand; int8 calibrates on a handful of images; the
export command scores what it wrote; the CPU's features are read, not assumed."""

import importlib
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import trained_like
from synthetic import TinyNetwork, make_camvid_segnet, write_tiny_weights

from bisenet_pl import precision as precision_module
from bisenet_pl.cli import main
from bisenet_pl.deploy import (
    CpuFeatures,
    DeployedNetwork,
    ExportOptions,
    compare_with_pytorch,
    cpu_features,
    export,
    load_predictor,
    model_input,
    quantize_onnx,
)
from bisenet_pl.deploy.runtime import fastest_openvino_precision
from bisenet_pl.errors import ConfigError
from bisenet_pl.models import BiSeNetV2

REPO = Path(__file__).resolve().parents[1]
EXPORT_MODULE = importlib.import_module("bisenet_pl.deploy.export")  # the package's `export` is the function
MEAN, STD = (0.39, 0.40, 0.41), (0.30, 0.31, 0.29)


@pytest.fixture(scope="module")
def net():
    """BiSeNetV2, for what each backend and precision makes of the real network."""
    torch.manual_seed(0)
    return trained_like(BiSeNetV2(num_classes=5))


@pytest.fixture(scope="module")
def float_graphs() -> dict:
    return {}


@pytest.fixture
def float_graph_once(float_graphs, monkeypatch):
    """export_onnx remembered per network and options across the five backend-precision cases: they all start
    from the same float graph of ``net`` (BiSeNetV2: about 12 s an export on a 2-core AVX2 CPU); what each does
    with it (quantize, convert, load, compare) still runs in each."""
    export_onnx = EXPORT_MODULE.export_onnx

    def export_onnx_once(net, path, options=ExportOptions(), opset=18):
        key = (id(net), repr(options), opset)
        if key not in float_graphs:
            float_graphs[key] = export_onnx(net, path, options, opset).read_bytes()
        else:
            Path(path).write_bytes(float_graphs[key])
        return Path(path)

    monkeypatch.setattr(EXPORT_MODULE, "export_onnx", export_onnx_once)


@pytest.fixture(scope="module")
def tiny():
    """For the mechanics around the file (inputs, outputs, errors, modes): exported in seconds."""
    torch.manual_seed(0)
    return trained_like(TinyNetwork(num_classes=5))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A weights file as the released one (CamVid's classes and normalisation) of a TinyNetwork."""
    return write_tiny_weights(tmp_path_factory.mktemp("weights") / "tiny_camvid.pt")


def images(count: int = 3, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64 + 8 * i, 96, 3), dtype=np.uint8) for i in range(count)]


@pytest.mark.parametrize(
    "format, precision",
    [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "bf16"), ("openvino", "int8")],
)
def test_each_backend_and_precision_exports_loads_and_predicts(net, float_graph_once, tmp_path, format, precision):
    options = ExportOptions(image_input="uint8_nhwc", mean=MEAN, std=STD, precision=precision, example_size=(64, 96))
    path = export(
        net,
        tmp_path / f"net.{'xml' if format == 'openvino' else 'onnx'}",
        format,
        options=options,
        calibration=images(),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == (
        ["net.bin", "net.xml"] if format == "openvino" else ["net.onnx"]
    )  # nothing else left
    predictor = load_predictor(path, threads=1)
    assert predictor.backend == ("openvino" if format == "openvino" else "onnxruntime")
    if precision == "int8":
        assert predictor.precision.startswith("int8")
    elif precision == "bf16" and cpu_features().native_bf16:
        assert predictor.precision == "bf16"
    else:
        assert predictor.precision in ("fp32", "bf16")
    image = images(1, seed=1)[0]
    logits = predictor(image[None])
    assert logits.shape == (1, 5, image.shape[0], image.shape[1]) and logits.dtype == np.float32
    comparison = compare_with_pytorch(net, path, options, (80, 112))
    if precision == "fp32":
        assert comparison["max_abs_diff"] <= 1e-4 * comparison["scale"]
    else:  # close, not equal: the classes of most pixels stay
        assert 0 < comparison["max_abs_diff"] <= 0.5 * comparison["scale"]
        with torch.no_grad():
            expected = DeployedNetwork(net, image_input="uint8_nhwc", mean=MEAN, std=STD)(torch.from_numpy(image[None]))
        assert (logits.argmax(axis=1) == expected.argmax(dim=1).numpy()).mean() >= 0.8


@pytest.mark.parametrize("image_input", ["uint8_nhwc", "uint8_nchw"])
def test_8bit_input_equals_normalising_by_hand(tiny, tmp_path, image_input):
    image = images(1)[0]
    by_hand = (image.astype(np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    with torch.no_grad():
        expected = tiny(torch.from_numpy(by_hand.transpose(2, 0, 1)[None].copy())).numpy()
        ours = DeployedNetwork(tiny, image_input=image_input, mean=MEAN, std=STD)(
            torch.from_numpy(model_input(image, image_input, MEAN, STD))
        ).numpy()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    options = ExportOptions(labels="int32", image_input=image_input, mean=MEAN, std=STD, example_size=(64, 96))
    labels = load_predictor(export(tiny, tmp_path / "net.onnx", options=options))(
        model_input(image, image_input, MEAN, STD)
    )
    assert labels.dtype == np.int32 and labels.shape == (1, *image.shape[:2])
    assert (labels == expected.argmax(axis=1)).mean() > 0.999


def test_int8_calibration_on_a_handful_of_images(net, tmp_path):
    float_path = export(net, tmp_path / "float.onnx", options=ExportOptions(example_size=(64, 96)))
    graph = quantize_onnx(float_path, images(3), "float", MEAN, STD).graph
    made_by = {output: node for node in graph.node for output in node.output}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    dequantized_inputs = [
        made_by.get(conv.input[0]) is not None and made_by[conv.input[0]].op_type == "DequantizeLinear"
        for conv in convs
    ]
    assert sum(dequantized_inputs) >= len(convs) - 2  # int8 convolutions throughout...
    assert not dequantized_inputs[-1]  # ...but the classifier, which stays float
    with pytest.raises(ConfigError, match="at least one image"):
        quantize_onnx(float_path, [], "float", MEAN, STD)


def test_export_command_writes_int8_openvino_and_scores_it(tmp_path, tiny_weights, capsys):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 3, "val": 2})
    output = tmp_path / "out" / "camvid.xml"
    output.parent.mkdir()
    main([
        "export", f"--model.pretrained={tiny_weights}", "--format=openvino", "--precision=int8", "--input=uint8_nhwc",
        "--labels=int32", f"--config={REPO / 'configs' / 'camvid.yaml'}", f"--data.root={camvid}", "--size", "64", "96",
        "--calibration_images=2", "--score", f"--output={output}", "--label_resolution=half",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert "labels int32 (argmax at half resolution) out" in printed
    assert "wrote" in printed and "openvino int8 against PyTorch fp32 at 64x96" in printed
    assert "val mIoU on 2 images: the file" in printed and "PyTorch fp32" in printed
    assert sorted(p.name for p in output.parent.iterdir()) == ["camvid.bin", "camvid.xml"]
    labels = load_predictor(output)(np.zeros((1, 40, 56, 3), np.uint8))
    assert labels.dtype == np.int32 and labels.shape == (1, 40, 56) and labels.max() < 11


@pytest.mark.parametrize("bf16_ms", [30.0, 49.0])
def test_export_command_precision_auto_records_what_measures_fastest(
    tmp_path, tiny_weights, capsys, monkeypatch, bf16_ms
):
    monkeypatch.setenv("BISENET_PL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "time_alternately", lambda steps: {"fp32": 0.050, "bf16": bf16_ms / 1000})
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 3, "val": 2})
    output = tmp_path / "camvid.xml"
    main([
        "export", f"--model.pretrained={tiny_weights}", "--format=openvino", "--precision=auto", "--input=uint8_nhwc",
        "--labels=int32", f"--config={REPO / 'configs' / 'camvid.yaml'}", f"--data.root={camvid}", "--size", "64", "96",
        "--score", f"--output={output}",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    chosen = "bf16" if bf16_ms == 30.0 else "fp32"  # bf16 must be 10% faster
    assert f"precision=auto: {chosen}, the fastest for camvid.xml in OpenVINO at 64x96" in printed
    assert f"{chosen}: val mIoU on 2 images: the file" in printed
    assert f"runs in {chosen} when loaded" in printed
    # What the file computes when loaded: bf16 only where the CPU has it (the fake timings chose it anyway;
    # OpenVINO runs a bf16 hint in fp32 on an AVX2-only CPU, and says so).
    computes = chosen if chosen == "fp32" or cpu_features().native_bf16 else "fp32"
    assert load_predictor(output).precision.endswith(computes)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".xml", ".bin")) == ["camvid.bin", "camvid.xml"]
    with pytest.raises(SystemExit, match="--precision auto chooses OpenVINO's inference precision"):
        main(
            [
                "export",
                f"--model.pretrained={tiny_weights}",
                "--format=onnx",
                "--precision=auto",
                f"--output={tmp_path / 'x.onnx'}",
            ]
        )


def test_export_command_calibrates_on_a_folder(tmp_path, tiny_weights, capsys):
    folder = make_camvid_segnet(tmp_path / "camvid", {"train": 2}) / "train"
    output = tmp_path / "int8.onnx"
    main(["export", f"--model.pretrained={tiny_weights}", "--precision=int8", f"--calibration={folder}", "--size",
    "64", "96", f"--output={output}",
          "--calibration_images=50"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "onnxruntime int8 against PyTorch fp32" in printed
    assert f"calibrating int8 on 2 images of {folder} (--calibration_images 50: that is all there are)" in printed
    assert "grayscale" in printed  # the synthetic images are grey: said, not refused
    assert load_predictor(output).precision == "int8"


@pytest.mark.parametrize(
    "options, message",
    [
        (["--format=onnx", "--precision=bf16"], "bf16 is an OpenVINO inference precision"),
        (["--format=torchscript", "--precision=int8"], "TorchScript export is fp32"),
        (["--format=weights", "--precision=int8"], "--format weights writes the network's weights: --precision"),
        (["--precision=int8"], "--precision int8 needs calibration images"),
        (["--precision=int8", "--calibration={empty}"], "the folder holds no images"),
        (["--precision=int8", "--calibration={missing}"], "no such data config or folder of images"),
        (["--score"], "--score: a weights file holds no data config; give the training config as --config"),
        (["--calibration={empty}"], "--calibration calibrates an int8 file: add --precision int8"),  # was ignored
        (["--calibration_images=5"], "--calibration_images calibrates an int8 file"),  # was ignored
        (["--calibration_images=0", "--precision=int8"], "--calibration_images must be >= 1"),
        (["--size", "0", "8"], "--size H W must be two sizes >= 1"),
        (["--output={empty}"], "is a folder: give the file's path, e.g. .*empty/bisenetv2_camvid.onnx"),
        (["--output={noext}"], "an ONNX file ends in .onnx"),
        (["--format=openvino", "--output={noext}.onnx"], "an OpenVINO file ends in .xml"),
        (["--label_resolution=half"], "--label_resolution half is for class ids: give --labels"),
        (["--format=torchscript", "--labels=int32", "--label_resolution=half"], "is for --format onnx or openvino"),
    ],
)
def test_export_command_refuses_what_it_cannot_do(tmp_path, options, message):
    (tmp_path / "empty").mkdir()
    options = [
        o.format(empty=tmp_path / "empty", missing=tmp_path / "missing", noext=tmp_path / "noext") for o in options
    ]
    with pytest.raises(SystemExit, match=message):
        main(
            [
                "export",
                "--model.pretrained=bisenetv2_camvid",
                "--size",
                "64",
                "96",
                f"--output={tmp_path / 'out.onnx'}",
                *options,
            ]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # nothing written


@pytest.mark.parametrize("format, dtype", [("onnx", "int64"), ("openvino", "int32")])
def test_half_resolution_labels_are_the_argmax_at_half_size_repeated_2x2(net, tmp_path, format, dtype):
    options = ExportOptions(dtype, "uint8_nhwc", MEAN, STD, example_size=(64, 96), label_resolution="half")
    path = export(net, tmp_path / f"net.{'xml' if format == 'openvino' else 'onnx'}", format, options=options)
    image = images(1, seed=2)[0]  # 64x96
    scores = {}
    hook = net.head.classifier.register_forward_hook(lambda module, inputs, output: scores.update(low=output))
    with torch.no_grad():
        full = DeployedNetwork(net, image_input="uint8_nhwc", mean=MEAN, std=STD)(torch.from_numpy(image[None]))
    hook.remove()
    half = torch.nn.functional.interpolate(scores["low"], size=(32, 48), mode="bilinear", align_corners=False)
    expected = half.argmax(dim=1).repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).numpy()
    labels = load_predictor(path, threads=1)(image[None])
    assert labels.dtype == np.dtype(dtype) and labels.shape == (1, 64, 96)
    assert (labels == expected).mean() > 0.999
    assert 0.8 < (labels == full.argmax(dim=1).numpy()).mean() < 1  # the full size's ids but along boundaries
    odd = load_predictor(path, threads=1)(np.zeros((1, 37, 50, 3), np.uint8))
    assert odd.shape == (1, 37, 50)  # any size: half of it rounded up, back to it


def test_uint8_input_needs_the_training_normalisation():
    """Without the training data's mean and std (a plain checkpoint, no config) nothing is baked in."""
    with pytest.raises(ConfigError, match="mean and std"):
        ExportOptions(image_input="uint8_nhwc")


def test_throughput_mode_predicts_what_one_at_a_time_does_in_order(tmp_path, tiny):
    options = ExportOptions(labels="int32", image_input="uint8_nhwc", mean=MEAN, std=STD, example_size=(64, 96))
    xml = export(tiny, tmp_path / "net.xml", "openvino", options=options)
    # Two shapes, the second after the first's batches are in flight, then the first again.
    batches = [image[None] for image in images(3) for _ in range(3)] + [images(1)[0][None]]
    one_at_a_time = load_predictor(xml, precision="fp32")
    expected = [one_at_a_time(batch) for batch in batches]
    throughput = load_predictor(xml, precision="fp32", throughput=True)
    assert throughput.config["PERFORMANCE_HINT"] == "THROUGHPUT"
    outputs = list(throughput.map(iter(batches)))
    assert len(outputs) == len(batches)
    for output, wanted in zip(outputs, expected):
        np.testing.assert_array_equal(output, wanted)
    assert all(np.array_equal(a, b) for a, b in zip(one_at_a_time.map(batches), expected))  # any predictor maps
    onnx_file = export(tiny, tmp_path / "net.onnx", options=options)
    with pytest.raises(ConfigError, match="throughput mode is OpenVINO's"):
        load_predictor(onnx_file, throughput=True)
    assert list(load_predictor(onnx_file).map([])) == []


def test_a_batch_the_file_does_not_take_is_one_line_saying_what_it_takes(tmp_path, tiny):
    options = ExportOptions(labels="int32", image_input="uint8_nhwc", mean=MEAN, std=STD, example_size=(64, 96))
    onnx_file = export(tiny, tmp_path / "net.onnx", options=options)
    for predictor in (load_predictor(onnx_file), load_predictor(onnx_file, backend="openvino")):
        assert predictor(np.zeros((1, 40, 56, 3), np.uint8)).shape == (1, 40, 56)
        for wrong in (
            np.zeros((40, 56, 3), np.uint8),
            np.zeros((1, 40, 56, 3), np.float32),
            np.zeros((1, 3, 40, 56), np.uint8),
        ):
            with pytest.raises(
                ConfigError, match=r"net.onnx takes a batch of images \(N, H, W, 3\) of uint8 .* got an array"
            ):
                predictor(wrong)
    floats = export(tiny, tmp_path / "float.onnx", options=ExportOptions(example_size=(64, 96)))
    with pytest.raises(ConfigError, match=r"takes a batch of images \(N, 3, H, W\) of float32 .* \(1, 3, 0, 56\)"):
        load_predictor(floats)(np.zeros((1, 3, 0, 56), np.float32))


def test_load_predictor_refuses_what_it_cannot_run(tmp_path, tiny):
    with pytest.raises(ConfigError, match=r"expected an exported .onnx or OpenVINO .xml file \(a weights file or "):
        load_predictor(tmp_path / "net.pt")
    path = export(tiny, tmp_path / "net.onnx", options=ExportOptions(example_size=(64, 96)))
    with pytest.raises(ConfigError, match="needs OpenVINO: load_predictor\\(path, backend='openvino', ...\\)"):
        load_predictor(path, precision="bf16")
    assert load_predictor(path, backend="openvino", precision="fp32").describe() == "openvino fp32"
    # int8 asked of a float file ran it in float without a word, in both runtimes
    for backend in ("onnxruntime", "openvino"):
        with pytest.raises(ConfigError, match="net.onnx is not quantized: int8 needs a file that bisenet-pl export"):
            load_predictor(path, backend=backend, precision="int8")
    with pytest.raises(ConfigError, match="precision must be fp32, bf16, int8 or auto .*; got 'fp16'"):
        load_predictor(path, precision="fp16")  # pointed ONNX Runtime users to OpenVINO, which refused it too
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_predictor(tmp_path / "missing.onnx")
    with pytest.raises(ConfigError, match="threads must be >= 1 .*; got -1"):
        load_predictor(path, backend="openvino", threads=-1)  # was OpenVINO's RuntimeError from its core
    with pytest.raises(ConfigError, match=r"auto_size must be \(height, width\), each >= 1; got \(0, 0\)"):
        load_predictor(path, backend="openvino", precision="auto", auto_size=(0, 0))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ConfigError, match="truncated.onnx is not a model ONNX Runtime can load"):
        load_predictor(truncated)
    xml = export(tiny, tmp_path / "net.xml", "openvino", options=ExportOptions(example_size=(64, 96)))
    xml.with_suffix(".bin").unlink()
    with pytest.raises(ConfigError, match=r"net.xml: its weights .*net.bin are missing"):
        load_predictor(xml)
    (tmp_path / "garbage.xml").write_text("<net></net>")
    (tmp_path / "garbage.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="garbage.xml is not a model OpenVINO can read"):
        load_predictor(tmp_path / "garbage.xml")


TWO_PREDICTORS_THEN_A_SIGNAL = """
import gc, signal, subprocess, sys
from bisenet_pl.deploy import load_predictor

first, second = load_predictor(sys.argv[1]), load_predictor(sys.argv[1])
first(first.example_input(64, 96))
second(second.example_input(64, 96))
del first  # freed in the order they were made, as precision=auto frees the two it timed
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, as PyTorch's DataLoader sets
subprocess.run([sys.executable, "-c", "pass"], check=True)  # its end is a SIGCHLD handled on this thread
print("signals still handled")
"""


def test_openvino_predictors_freed_in_any_order_leave_the_process_able_to_handle_signals(tmp_path, tiny):
    # The SIGSEGV that bisenet_pl.deploy.runtime.openvino_core's docstring explains (a Core per predictor);
    # it killed test workers that started a child process. In a child here, so that a crash fails one test.
    path = export(tiny, tmp_path / "net.xml", "openvino", options=ExportOptions(example_size=(64, 96)))
    result = subprocess.run(
        [sys.executable, "-c", TWO_PREDICTORS_THEN_A_SIGNAL, str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "signals still handled" in result.stdout, (
        result.returncode,
        result.stderr[-2000:],
    )


def test_precision_auto_keeps_what_openvino_measures_fastest_for_the_file(tmp_path, tiny, monkeypatch, caplog):
    path = export(tiny, tmp_path / "net.xml", "openvino", options=ExportOptions(example_size=(64, 96)))
    cache, measured = tmp_path / "precision.json", []

    def fake_measure(timings):
        def measure(steps):
            measured.append(sorted(steps))
            for run in steps.values():
                run()  # the predictors really run the file once
            return timings

        return measure

    fast_bf16 = fake_measure({"fp32": 0.050, "bf16": 0.030})
    choice = fastest_openvino_precision(path, size=(64, 96), measure=fast_bf16, cache=cache)
    assert choice.precision == "bf16" and measured == [["bf16", "fp32"]]
    assert (
        "precision=auto: bf16, the fastest for net.xml in OpenVINO at 64x96 (measured now: fp32 50 ms, bf16 30 ms "
        "(1.67x))" in choice.describe()
    )
    assert fastest_openvino_precision(path, size=(64, 96), measure=fast_bf16, cache=cache).cached  # measured once
    slow_bf16 = fake_measure({"fp32": 0.050, "bf16": 0.048})
    assert fastest_openvino_precision(path, size=(64, 112), measure=slow_bf16, cache=cache).precision == "fp32"
    # Through load_predictor: the choice is applied and said.
    monkeypatch.setenv("BISENET_PL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "time_alternately", lambda steps: {"fp32": 0.05, "bf16": 0.048})
    with caplog.at_level(logging.INFO):
        predictor = load_predictor(path, precision="auto", auto_size=(64, 96))
    assert predictor.config["INFERENCE_PRECISION_HINT"] == "f32" and "precision=auto: fp32" in caplog.text
    onnx_file = export(tiny, tmp_path / "net.onnx", options=ExportOptions(example_size=(64, 96)))
    assert load_predictor(onnx_file, precision="auto").describe() == "onnxruntime fp32"  # nothing to choose


def test_cpu_features_name_what_decides_the_fastest_variant():
    avx2 = CpuFeatures("AVX2 CPU", frozenset({"avx2", "fma"}))
    assert (avx2.vector, avx2.native_bf16, avx2.int8_dot_product) == ("AVX2", None, None)
    zen = CpuFeatures("EPYC", frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))
    assert (zen.vector, zen.native_bf16, zen.int8_dot_product) == ("AVX512", "AVX512_BF16", "AVX512_VNNI")
    xeon = CpuFeatures(
        "Xeon", frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"})
    )
    assert (xeon.native_bf16, xeon.int8_dot_product, xeon.amx) == ("AMX", "AMX", True)
    assert xeon.describe() == "Xeon (AVX512, bf16: AMX, int8: AMX)"
    assert cpu_features().name  # this machine's, read from /proc/cpuinfo
