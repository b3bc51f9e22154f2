"""The inference rows of benchmarks/speed.py: each variant from an 8-bit image to class ids, timed side by
side with the reference's way, its logits compared with PyTorch fp32's, and its val mIoU when scored. The
exported variants run the files `bisenet-pl export` writes, made by the same function from the same
calibration images."""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from speed_table import format_row, parse_size

from bisenet_pl.data.base import SegmentationDataModule
from bisenet_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bisenet_pl.deploy import DeployedNetwork, inference_network, load_predictor
from bisenet_pl.deploy.accuracy import MIOU_TOLERANCE, mean_iou
from bisenet_pl.deploy.calibration import calibration_images as export_calibration_images
from bisenet_pl.deploy.export import EXPORT_SUFFIXES, ExportOptions, export, save_onnx
from bisenet_pl.deploy.labels import append_argmax
from bisenet_pl.hardware import cpu_features
from bisenet_pl.measure import count_flops, count_parameters, measure_interleaved
from bisenet_pl.models import BiSeNetV1, BiSeNetV2
from bisenet_pl.models.weights import read_weights_info
from bisenet_pl.module import SegmentationModule

NETWORKS = {"v2": BiSeNetV2, "v1": BiSeNetV1}
#: The papers' resolutions (H x W): Cityscapes at half and full size, CamVid at 720x960.
PAPER_SIZES = ["512x1024", "720x960", "1024x2048"]
PYTORCH_VARIANTS = ["reference", "channels_last", "folded", "folded+channels_last", "compile", "pytorch-bf16"]
EXPORTED_VARIANTS = [
    "onnxruntime",
    "onnxruntime+winograd",
    "onnxruntime-int8",
    "openvino",
    "openvino+winograd",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8+bf16",
    "openvino-int8+half",
    "openvino-int8+bf16+half",
]
CPU_VARIANTS = ["reference", "folded+channels_last", "pytorch-bf16", *EXPORTED_VARIANTS]
GPU_VARIANTS = ["reference", "channels_last", "folded+channels_last", "amp", "compile+amp"]


def supported_variants(variants: list[str]) -> tuple[list[str], list[str]]:
    """The variants this machine runs well, and the ones left out with why: bf16 where the CPU
    emulates it (slower than fp32), OpenVINO where it is not installed."""
    native_bf16 = cpu_features().native_bf16
    has_openvino = importlib.util.find_spec("openvino") is not None
    kept, skipped = [], []
    for variant in variants:
        if "bf16" in variant and not native_bf16:
            skipped.append(f"{variant} (no native bf16 on this CPU)")
        elif variant.startswith("openvino") and not has_openvino:
            skipped.append(f"{variant} (openvino not installed)")
        else:
            kept.append(variant)
    return kept, skipped


class Variant(NamedTuple):
    """One way of running a network: from 8-bit NHWC images to class ids (timed), and to logits
    (compared with PyTorch fp32)."""

    segment: Callable[[np.ndarray], np.ndarray]
    logits: Callable[[np.ndarray], np.ndarray]


def pytorch_variant(variant: str, net: torch.nn.Module, mean, std, device: torch.device) -> Variant:
    """PyTorch from 8-bit images: ``reference`` is the network as trained (no copy, BatchNorm
    unfused, NCHW); ``folded`` fuses BatchNorm into the convolutions; ``channels_last`` takes the
    NHWC image as it is (PyTorch then computes channels-last); ``compile``, ``pytorch-bf16`` and the
    GPU's ``amp`` add torch.compile, bf16 or fp16 autocast to folded channels-last."""
    fold = variant not in ("reference", "channels_last")
    nhwc = variant not in ("reference", "folded")
    image_input = "uint8_nhwc" if nhwc else "uint8_nchw"
    network = inference_network(net) if fold else net.eval()
    model = DeployedNetwork(network, image_input=image_input, mean=mean, std=std).to(device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    if "compile" in variant:
        model = torch.compile(model)
    dtype = torch.bfloat16 if "bf16" in variant else torch.float16 if "amp" in variant else None

    def logits(images: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(images if nhwc else np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            return model(batch).float()

    return Variant(
        segment=lambda images: logits(images).argmax(dim=1), logits=lambda images: logits(images).cpu().numpy()
    )


def exported_files(
    net: torch.nn.Module,
    folder: Path,
    mean,
    std,
    calibration: list[np.ndarray] | None,
    winograd: dict[str, tuple[int, int]] | None = None,
) -> dict[str, tuple[Path, Path, Path]]:
    """The network as `bisenet-pl export --format onnx --input uint8_nhwc [--precision int8] [--labels int64]
    [--label_resolution half]` writes it, by the same functions and (int8) from the same calibration images: for
    each precision, a file of logits, one of class ids and one of class ids at half resolution. ``winograd``:
    for each runtime named, fp32 files exported with `--winograd auto` for that runtime, measured at the size given
    (keyed ``fp32+winograd-<runtime>``; the choice is printed)."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for runtime, size in (winograd or {}).items():
        format = "openvino" if runtime == "openvino" else "onnx"  # timed in the runtime that will run the file
        written = []
        for labels in (None, "int64"):
            options = ExportOptions(labels, "uint8_nhwc", mean, std, "fp32", size, winograd="auto")
            path = folder / f"fp32.winograd.{runtime}{'.labels' if labels else ''}{EXPORT_SUFFIXES[format]}"
            # The class-ids file's choice is the logits file's, read from the cache: said once.
            say = (
                (lambda line: None)
                if labels
                else (lambda line, runtime=runtime: print(f"{runtime}: {line}", file=sys.stderr))
            )
            written.append(export(net, path, format, options, say=say))
        files[f"fp32+winograd-{runtime}"] = (*written, written[1])
    for precision in ["fp32"] + (["int8"] if calibration is not None else []):
        written = []
        for labels in (None, "int64"):
            options = ExportOptions(labels, "uint8_nhwc", mean, std, precision, example_size=(64, 64))
            path = folder / f"{precision}{'.labels' if labels else ''}.onnx"
            written.append(export(net, path, "onnx", options=options, calibration=calibration))
        # As export appends it to the (quantized) logits: the same file with half-resolution labels.
        half = save_onnx(append_argmax(onnx.load(str(written[0])), "int64", "half"), folder / f"{precision}.half.onnx")
        files[precision] = (*written, half)
    return files


def exported_variant_files(
    variant: str, files: dict[str, tuple[Path, Path, Path]], threads: int
) -> tuple[Path, Path, dict]:
    """The logits file and the class-ids file of an exported variant, and the ``load_predictor`` options."""
    if variant.endswith("+winograd"):
        backend = variant.removesuffix("+winograd")
        logits_file, labels_file, _ = files[f"fp32+winograd-{backend}"]
        options = {"backend": backend, "threads": threads} | ({"precision": "fp32"} if backend == "openvino" else {})
        return logits_file, labels_file, options
    backend, _, precision = variant.partition("-")
    file_precision = "int8" if "int8" in precision else "fp32"
    compute = "bf16" if "bf16" in precision else "fp32"
    logits_file, labels_file, half_labels_file = files[file_precision]
    options = {"backend": backend, "threads": threads} | ({"precision": compute} if backend == "openvino" else {})
    return logits_file, half_labels_file if precision.endswith("+half") else labels_file, options


def exported_variant(variant: str, files: dict[str, tuple[Path, Path, Path]], threads: int) -> Variant:
    logits_file, labels_file, options = exported_variant_files(variant, files, threads)
    return Variant(segment=load_predictor(labels_file, **options), logits=load_predictor(logits_file, **options))


def throughput_row(variant: str, files, threads: int, images: np.ndarray, count: int) -> dict:
    """Images per second of an OpenVINO variant loaded for throughput, ``count`` batches through
    ``predictor.map`` (several in flight), after a first pass that compiles."""
    _, labels_file, options = exported_variant_files(variant, files, threads)
    predictor = load_predictor(labels_file, **options, throughput=True)
    for _ in predictor.map([images] * 2):
        pass
    requests = predictor.compiled_for(images.shape).get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    start = time.perf_counter()
    for _ in predictor.map([images] * count):
        pass
    return {
        "variant": f"{variant} (throughput, {requests} in flight)",
        "images_per_s": count * len(images) / (time.perf_counter() - start),
    }


def benchmark_app_ms(path: Path, shape: tuple[int, ...], precision: str, seconds: int) -> float | None:
    """The median latency OpenVINO's own ``benchmark_app`` reports for ``path`` at ``shape`` (latency hint,
    which takes every core; ``precision`` for the float layers), or None, said, where it does not run."""
    import re
    import subprocess

    command = [
        sys.executable, "-c", "import sys; from openvino.tools.benchmark.main import main; sys.exit(main())",
        "-m", str(path), "-d", "CPU", "-hint", "latency", "-shape", "[" + ",".join(map(str, shape)) + "]",
        "-t", str(seconds), "-infer_precision", {"fp32": "f32", "bf16": "bf16"}[precision],
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    median = re.search(r"Median:\s+([0-9.]+) (ms|us)", result.stdout)  # us below a millisecond
    if result.returncode != 0 or not median:
        last = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        print(f"benchmark_app did not time {path.name}: {last}", file=sys.stderr)
        return None
    return float(median.group(1)) / (1000 if median.group(2) == "us" else 1)


def inference_table(args, device: torch.device) -> list[dict]:
    """The inference rows; the exported files live in a temporary folder removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="bisenet-bench-"))
    try:
        return inference_rows(args, device, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def inference_rows(args, device: torch.device, folder: Path) -> list[dict]:
    rows = []
    trained = SegmentationModule.from_pretrained(args.checkpoint).net.float().eval() if args.checkpoint else None
    data = scoring_data(args)
    normalisation = trained_normalisation(args.checkpoint, data)
    calibration = calibration_images(args, data) if any("int8" in v for v in args.variants) else None
    for name in args.networks:
        torch.manual_seed(0)
        ours = trained is not None and type(trained) is NETWORKS[name]
        net = trained if ours else NETWORKS[name](num_classes=args.num_classes).eval()
        mean, std = normalisation if ours else (IMAGENET_MEAN, IMAGENET_STD)
        files = {}
        if any(v in EXPORTED_VARIANTS for v in args.variants):
            winograd = {
                v.removesuffix("+winograd"): parse_size(args.sizes[0]) for v in args.variants if "winograd" in v
            }
            files = exported_files(net, folder / name, mean, std, calibration, winograd)
        variants = {
            v: exported_variant(v, files, torch.get_num_threads())
            if v in EXPORTED_VARIANTS
            else pytorch_variant(v, net, mean, std, device)
            for v in args.variants
        }
        scores = {}
        if ours and data is not None:
            start = time.perf_counter()
            scores = mean_iou({v: (lambda image, run=variant.segment: np.asarray(run(image[None]))[0]) for v,
            variant in variants.items()},
                              data.val, data.num_classes, data.ignore_index)  # fmt: skip
            print(
                f"scored {len(args.variants)} variants of {type(net).__name__} on {args.data_root} val in "
                f"{time.perf_counter() - start:.0f} s",
                file=sys.stderr,
            )
        deployed = inference_network(net)
        for size in args.sizes:
            height, width = parse_size(size)
            images = benchmark_images(args.batch_size, height, width, data.val if data else None)
            flops = count_flops(deployed, torch.randn(1, 3, height, width))
            expected = variants["reference"].logits(images) if "reference" in variants else None
            runs, setup = {}, {}
            for variant, runner in variants.items():
                start = time.perf_counter()
                runs[variant] = lambda run=runner.segment: run(images)
                runs[variant]()  # the first call compiles or plans
                setup[variant] = time.perf_counter() - start
            latencies = measure_interleaved(runs, args.batch_size, args.warmup, args.iterations, device)
            reference_fps = latencies["reference"].fps if "reference" in latencies else float("nan")
            threads = torch.get_num_threads()
            openvino_variants = [v for v in variants if v.startswith("openvino")]
            app_ms = {}
            if args.benchmark_app:
                for variant in openvino_variants:
                    _, labels_file, options = exported_variant_files(variant, files, threads)
                    app_ms[variant] = benchmark_app_ms(
                        labels_file, images.shape, options["precision"], args.benchmark_app
                    )
            for variant, latency in latencies.items():
                row = {
                    "kind": "inference",
                    "network": type(net).__name__,
                    "size": size,
                    "batch": args.batch_size,
                    "variant": variant,
                    "params_M": count_parameters(deployed) / 1e6,
                    "GFLOPs": flops / 1e9,
                    "ms_per_batch": latency.mean_ms,
                    "p50_ms": latency.p50_ms,
                    "p90_ms": latency.p90_ms,
                    "p99_ms": latency.p99_ms,
                    "images_per_s": latency.fps,
                    "x_reference": latency.fps / reference_fps,
                    "setup_s": setup[variant],
                }
                if expected is not None:
                    difference = float(np.abs(np.asarray(variants[variant].logits(images)) - expected).max())
                    scale = float(np.abs(expected).max())
                    row |= {"max_abs_diff": difference, "logit_scale": scale, "exact": bool(difference <= 1e-4 * scale)}
                if scores:
                    row |= {"miou": scores[variant]}
                    if "reference" in scores:
                        row["within_1_miou"] = bool(scores["reference"] - scores[variant] <= MIOU_TOLERANCE)
                if app_ms.get(variant):
                    row |= {
                        "benchmark_app_p50_ms": app_ms[variant],
                        "p50_vs_benchmark_app": latency.p50_ms / app_ms[variant],
                    }
                rows.append(row)
                print(format_row(rows[-1]), file=sys.stderr, flush=True)
            for variant in openvino_variants if args.throughput else []:
                measured = throughput_row(variant, files, threads, images, args.iterations)
                rows.append(
                    {"kind": "throughput", "network": type(net).__name__, "size": size, "batch": args.batch_size}
                    | measured
                    | {"x_reference": measured["images_per_s"] / reference_fps}
                )
                print(format_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def benchmark_images(batch: int, height: int, width: int, val: list | None) -> np.ndarray:
    """The timed input: the first val image resized to the size (int8 ranges are calibrated on real
    images, so noise would overstate its logit differences), or random images without data."""
    if val is None:
        return np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    import cv2

    return np.repeat(cv2.resize(val[0][0], (width, height), interpolation=cv2.INTER_LINEAR)[None], batch, axis=0)


class ScoringData(NamedTuple):
    """``--data-root``'s val samples (RGB image, mask) to score, its train split to calibrate on."""

    val: list[tuple[np.ndarray, np.ndarray]]
    datamodule: SegmentationDataModule
    num_classes: int
    ignore_index: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def scoring_data(args) -> ScoringData | None:
    """The CamVid-layout data of ``--data-root``, if given (its class count must be the weights')."""
    if args.data_root is None:
        return None
    from bisenet_pl.data.camvid import CamVidDataModule

    datamodule = CamVidDataModule(root=args.data_root)
    datamodule.prepare_data()
    if args.checkpoint:
        classes = read_weights_info(args.checkpoint).num_classes
        if classes != datamodule.num_classes:
            raise SystemExit(
                f"--checkpoint {args.checkpoint} has {classes} classes; {args.data_root} has {datamodule.num_classes}"
            )
    val = datamodule.dataset("val")
    count = len(val) if args.val_images is None else min(args.val_images, len(val))
    return ScoringData(
        [val.load(i) for i in range(count)], datamodule, datamodule.num_classes,
        datamodule.ignore_index, datamodule.mean, datamodule.std,
    )  # fmt: skip


def trained_normalisation(
    checkpoint: str | None, data: ScoringData | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The trained network's mean and std: its weights file's, else the data's, else ImageNet's."""
    info = read_weights_info(checkpoint) if checkpoint else None
    if info is not None and info.mean is not None:
        return tuple(info.mean), tuple(info.std)
    return (data.mean, data.std) if data is not None else (IMAGENET_MEAN, IMAGENET_STD)


def calibration_images(args, data: ScoringData | None) -> list[np.ndarray]:
    """The images `bisenet-pl export --precision int8` calibrates on (the same subset of the training
    split, by the same function), or random images (for speed alone: int8 accuracy is then not scored)
    without ``--data-root``."""
    if data is None:
        height, width = parse_size(args.sizes[0])
        generator = np.random.default_rng(0)
        return [generator.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    with contextlib.redirect_stdout(sys.stderr):  # its line about what it read; the table goes to stdout
        return export_calibration_images(None, data.datamodule, args.calibration_images)
