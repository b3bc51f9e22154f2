"""Speed of BiSeNetV1 and V2: parameters, FLOPs, latency and FPS per inference variant (with how
far each is from PyTorch's fp32 logits, and its val mIoU when given weights and data), and the
training-step throughput of the LightningModule against a plain PyTorch loop.

Every inference variant runs from an 8-bit RGB image as read (N, H, W, 3) to class ids, so that
normalisation and argmax are counted wherever they happen. "reference" is the way CoinCheung/BiSeNet
runs the network: eager PyTorch, fp32, NCHW, BatchNorm unfused. Since our default networks are
numerically that network, it is measured here side by side with our variants in one run, on the
same machine and the same weights. The exported variants are the files `bisenet-pl export` writes
(ONNX with the normalisation inside; int8 calibrated with NNCF), run by ONNX Runtime or OpenVINO.

    python benchmarks/speed.py                                  # everything this machine can run
    python benchmarks/speed.py --networks v2 --sizes 512x1024 --variants reference openvino-int8
    python benchmarks/speed.py --checkpoint bisenetv2_camvid --data-root ../shared/camvid  # + val mIoU
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from bisenet_pl.data.base import SegmentationDataModule
from bisenet_pl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from bisenet_pl.deploy import DeployedNetwork, inference_network, load_predictor
from bisenet_pl.deploy.accuracy import MIOU_TOLERANCE, mean_iou
from bisenet_pl.deploy.calibration import CALIBRATION_IMAGES
from bisenet_pl.deploy.calibration import calibration_images as export_calibration_images
from bisenet_pl.deploy.export import ExportOptions, export
from bisenet_pl.errors import UserError
from bisenet_pl.files import atomic_write, check_writable
from bisenet_pl.hardware import cpu_features
from bisenet_pl.measure import count_flops, count_parameters, cpu_description, measure_interleaved, percentile
from bisenet_pl.models import BiSeNetV1, BiSeNetV2
from bisenet_pl.models.layers import Dropout, SegmentHead
from bisenet_pl.models.weights import read_weights_info
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
NETWORKS = {"v2": BiSeNetV2, "v1": BiSeNetV1}
#: The papers' resolutions (H x W): Cityscapes at half and full size, CamVid at 720x960.
PAPER_SIZES = ["512x1024", "720x960", "1024x2048"]
PYTORCH_VARIANTS = ["reference", "channels_last", "folded", "folded+channels_last", "compile", "pytorch-bf16"]
EXPORTED_VARIANTS = [
    "onnxruntime",
    "onnxruntime-int8",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
    "openvino-int8+bf16",
]
CPU_VARIANTS = ["reference", "folded+channels_last", "pytorch-bf16", *EXPORTED_VARIANTS]
GPU_VARIANTS = ["reference", "channels_last", "folded+channels_last", "amp", "compile+amp"]


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` as (height, width); anything else is an argparse error naming the text."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: expected HEIGHTxWIDTH, e.g. 512x1024") from None
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be at least 32 (the networks' stride)")
    return height, width


def at_least(minimum: int, why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (found before any work, not after minutes of it)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{why}; got {value}")
        return value

    return parse


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{cpu_description()}, {torch.get_num_threads()} threads (torch {torch.__version__}, CPU)"


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
    net: torch.nn.Module, folder: Path, mean, std, calibration: list[np.ndarray] | None
) -> dict[str, tuple[Path, Path]]:
    """The network as `bisenet-pl export --format onnx --input uint8_nhwc [--precision int8] [--labels int64]`
    writes it, by the same function and (int8) from the same calibration images: for each precision, a file
    of logits and one of class ids."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for precision in ["fp32"] + (["int8"] if calibration is not None else []):
        written = []
        for labels in (None, "int64"):
            options = ExportOptions(labels, "uint8_nhwc", mean, std, precision, example_size=(64, 64))
            path = folder / f"{precision}{'.labels' if labels else ''}.onnx"
            written.append(export(net, path, "onnx", options=options, calibration=calibration))
        files[precision] = (written[0], written[1])
    return files


def exported_variant_files(variant: str, files: dict[str, tuple[Path, Path]], threads: int) -> tuple[Path, Path, dict]:
    """The logits file and the class-ids file of an exported variant, and the ``load_predictor`` options."""
    backend, _, precision = variant.partition("-")
    file_precision = "int8" if "int8" in precision else "fp32"
    compute = "bf16" if "bf16" in precision else "fp32"
    logits_file, labels_file = files[file_precision]
    options = {"backend": backend, "threads": threads} | ({"precision": compute} if backend == "openvino" else {})
    return logits_file, labels_file, options


def exported_variant(variant: str, files: dict[str, tuple[Path, Path]], threads: int) -> Variant:
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
            files = exported_files(net, folder / name, mean, std, calibration)
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


def recipe_options(config: Path) -> tuple[dict, str]:
    """The model options (network aside) and trainer precision of a training config."""
    recipe = yaml.safe_load(config.read_text())
    model = {k: v for k, v in recipe.get("model", {}).items() if k not in ("net", "pretrained", "backbone_weights")}
    return model, str(recipe.get("trainer", {}).get("precision", "32-true"))


def reference_ohem(
    logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.7, ignore_index: int = 255
) -> torch.Tensor:
    """OHEM cross-entropy as the reference computes it: boolean indexing, then top-k if too few."""
    min_kept = int((target != ignore_index).sum()) // 16
    losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    hard = losses[losses > -math.log(threshold)]
    if hard.numel() < min_kept:
        hard = losses.topk(min_kept).values
    return hard.mean()


def as_reference(model: torch.nn.Module) -> torch.nn.Module:
    """The network computed the reference's way: dropout masks from torch's Bernoulli sampler
    (``nn.Dropout``), not ours, and the booster heads' refinements on the upsampled map, not by phases."""
    for module in list(model.modules()):
        if isinstance(module, SegmentHead):
            module.refine_by_phases = False
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
    return model


class TrainingBench:
    """One way of training BiSeNetV2 on random batches, timed per step: a plain loop (the reference's way:
    fp32, NCHW, torch's SGD update, its OHEM, the network as :func:`as_reference` makes it; or a recipe's
    settings) or the LightningModule under a Trainer. Each step is timed from the end of the previous one,
    data included; the first of a block is not timed."""

    def __init__(self, settings: dict) -> None:
        self.settings = settings
        self.device = torch.device(settings["device"])
        self.height, self.width = parse_size(settings["size"])
        generator = torch.Generator().manual_seed(0)
        count = settings["batch"] * (settings["max_block"] + 1)
        self.images = torch.randn(count, 3, self.height, self.width, generator=generator)
        self.masks = torch.randint(0, settings["num_classes"], (count, self.height, self.width), generator=generator)

    def loader(self, steps: int):
        from torch.utils.data import DataLoader

        batch = self.settings["batch"]
        pairs = [{"image": image, "mask": mask} for image, mask in zip(self.images, self.masks)]
        return DataLoader(pairs[: steps * batch], batch_size=batch, shuffle=False, num_workers=0)

    def module(self, **options) -> SegmentationModule:
        torch.manual_seed(0)
        return SegmentationModule(net=BiSeNetV2, num_classes=self.settings["num_classes"], **options)

    def trainer(self, steps: int, precision: str, callbacks=()):
        from bisenet_pl.trainer import Trainer

        return Trainer(
            max_steps=steps, accelerator=self.device.type, devices=1, precision=precision, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=list(callbacks), limit_val_batches=0, num_sanity_val_steps=0,
        )  # fmt: skip

    def plain_block(self, model: SegmentationModule, steps: int, precision: str, reference: bool) -> list[float]:
        model.trainer = self.trainer(steps + 1, precision)  # for the schedule's length
        model.configure_model()  # channels-last, as the Trainer would
        amp_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(model.trainer.precision)
        optimisers = model.configure_optimizers()
        optimiser, scheduler = optimisers["optimizer"], optimisers["lr_scheduler"]["scheduler"]
        if reference:  # torch's default update, one parameter at a time, not the fused one
            for group in optimiser.param_groups:
                group["fused"] = None
        scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
        criterion = reference_ohem if reference else model.criterion
        model.train()
        times, last = [], time.perf_counter()
        for batch in self.loader(steps + 1):
            x, y = batch["image"].to(self.device), batch["mask"].to(self.device)
            with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(x)
                aux = zip(model.aux_weights, outputs[1:])
                loss = criterion(outputs[0], y) + sum(w * criterion(o, y) for w, o in aux)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - last)
            last = now
        return times[1:]

    def lightning_block(self, model: SegmentationModule, steps: int, precision: str) -> list[float]:
        import lightning as L

        device = self.device

        class StepTimer(L.Callback):
            """Time from one step's end to the next's: fetching, step, logging, everything."""

            def __init__(self) -> None:
                self.ends: list[float] = []

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                self.ends.append(time.perf_counter())

        timer = StepTimer()
        self.trainer(steps + 1, precision, [timer]).fit(model, train_dataloaders=self.loader(steps + 1))
        return [b - a for a, b in zip(timer.ends, timer.ends[1:])]


class ReferenceProcess:
    """The reference's way in a process of its own with the system's memory allocator, as its training
    script runs (``bisenet-pl`` keeps freed memory for the next step, :mod:`bisenet_pl.allocator`); it
    runs a block of steps when asked, so that it alternates with the other ways as if in one process."""

    def __init__(self, settings: dict) -> None:
        import subprocess

        environment = {**os.environ, "BISENET_PL_ALLOCATOR": "system"}
        command = [sys.executable, str(Path(__file__).resolve()), "--reference-worker", json.dumps(settings)]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment, cwd=REPO
        )

    def block(self, steps: int) -> list[float]:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError("the reference's training process ended early (its error is above)")
        return json.loads(answer)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def reference_worker(settings_json: str) -> None:
    """The reference's side of :class:`ReferenceProcess`: a block of steps per number read, times written back."""
    bench = TrainingBench(json.loads(settings_json))
    model = as_reference(bench.module()).to(bench.device)
    answers, sys.stdout = sys.stdout, sys.stderr  # only the times go to the parent
    for line in sys.stdin:
        times = bench.plain_block(model, int(line), "32-true", reference=True)
        answers.write(json.dumps(times) + "\n")
        answers.flush()


def training_table(args, device: torch.device) -> list[dict]:
    """Time per training step (BiSeNetV2, main + 4 aux losses, the warm-up and poly schedule) of
    the reference's way (in its own process, see :class:`ReferenceProcess`) against our LightningModule
    under a Trainer with a recipe's settings (``--train-config``: precision, channels-last, loss,
    optimiser, class and aux weights), and a plain loop with the recipe's settings (what the Trainer
    costs), in alternating blocks."""
    from bisenet_pl.allocator import keep_freed_memory
    from bisenet_pl.precision import fastest_cpu_precision
    from bisenet_pl.trainer import auto_precision

    keep_freed_memory()  # as bisenet-pl does, before anything is timed
    height, width = parse_size(args.train_size)
    model_options, precision = recipe_options(args.train_config)
    precision = args.train_precision or precision
    # The recipe's dataset decides the class count where its class weights give it away.
    class_weights = (model_options.get("loss") or {}).get("class_weights")
    num_classes = len(class_weights) if class_weights else args.num_classes
    considered = [precision]  # the LightningModule's rows: each precision auto weighed, else the one given
    if precision == "auto" and device.type == "cpu":
        torch.manual_seed(0)
        probe = SegmentationModule(net=BiSeNetV2, num_classes=num_classes, **model_options)
        choice = fastest_cpu_precision(probe, args.train_batch, (height, width))
        print(choice.describe(), file=sys.stderr, flush=True)
        precision, considered = choice.precision, list(choice.step_ms)
    elif precision == "auto":
        precision = considered[0] = auto_precision(device.type)[0]
    rounds = max(1, min(args.train_rounds, args.train_steps))
    per_block = [args.train_steps // rounds + (1 if r < args.train_steps % rounds else 0) for r in range(rounds)]
    settings = {
        "device": str(device), "size": args.train_size, "batch": args.train_batch, "num_classes": num_classes,
        "max_block": max(per_block),
    }  # fmt: skip
    bench = TrainingBench(settings)

    def recipe(candidate: str) -> str:
        chosen = " (auto's choice)" if len(considered) > 1 and candidate == precision else ""
        return (
            f"{args.train_config.name}: "
            f"{candidate}{chosen}{', channels-last' if model_options.get('channels_last') else ''}"
        )

    plain = bench.module(**model_options).to(device)
    ours: dict[str, Callable[[int], list[float]]] = {
        f"plain loop ({recipe(precision)})": lambda n: bench.plain_block(plain, n, precision, reference=False)
    }
    for candidate in considered:
        model = bench.module(**model_options).to(device)
        ours[f"LightningModule ({recipe(candidate)})"] = lambda n, model=model, candidate=candidate: (
            bench.lightning_block(model, n, candidate)
        )
    reference = ReferenceProcess(settings)  # started last: closed by the finally below whatever happens
    blocks = {"reference (plain loop, fp32, NCHW)": reference.block, **ours}
    try:
        for block in blocks.values():  # untimed: first-call set-up of each way
            block(1)
        times: dict[str, list[float]] = {name: [] for name in blocks}
        for steps in per_block:
            for name, block in blocks.items():
                times[name] += block(steps)
    finally:
        reference.close()
    reference_ms = 1000 * statistics.fmean(times[next(iter(blocks))])
    rows = []
    for name, step_times in times.items():
        ms = 1000 * statistics.fmean(step_times)
        rows.append(
            {
                "kind": "train",
                "network": "BiSeNetV2",
                "size": args.train_size,
                "batch": args.train_batch,
                "variant": name,
                "ms_per_batch": ms,
                "p90_ms": 1000 * percentile(step_times, 90),
                "images_per_s": 1000 * args.train_batch / ms,
                "x_reference": reference_ms / ms,
            }
        )
        print(format_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def which_to_pick(rows: list[dict]) -> list[str]:
    """For each network and size of the inference rows of this run: the fastest variant whose results
    match PyTorch's, and the fastest within 1.0 mIoU of fp32 (when scored; else the fastest, unscored)."""
    lines = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["kind"] == "inference":
            groups.setdefault((row["network"], row["size"]), []).append(row)
    for (network, size), group in groups.items():
        exact = [row for row in group if row.get("exact")]
        scored = [row for row in group if "within_1_miou" in row]
        accurate = [row for row in scored if row["within_1_miou"]] if scored else group
        picks = []
        if exact:
            best = min(exact, key=lambda row: row["ms_per_batch"])
            picks.append(f"exact: {best['variant']} ({best['ms_per_batch']:.0f} ms, {best['x_reference']:.2f}x)")
        if accurate:
            best = min(accurate, key=lambda row: row["ms_per_batch"])
            what = "within 1.0 mIoU of fp32" if scored else "fastest (not scored: give --checkpoint and --data-root)"
            miou = f", mIoU {best['miou']:.2f}" if "miou" in best else ""
            picks.append(f"{what}: {best['variant']} ({best['ms_per_batch']:.0f} ms, {best['x_reference']:.2f}x{miou})")
        lines.append(f"- {network} {size}: " + "; ".join(picks))
    return lines


def format_row(row: dict, keys: list[str] | None = None) -> str:
    """The row's cells (``keys``' cells, ``-`` where the row has none)."""

    def cell(key: str) -> str:
        value = row.get(key, "-")
        if key in ("max_abs_diff", "logit_scale") and isinstance(value, float):
            return f"{value:.1e}"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    return " | ".join(cell(key) for key in (keys or list(row)))


def markdown(rows: list[dict]) -> str:
    header = list(dict.fromkeys(key for row in rows for key in row))  # every row's keys, in first-seen order
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] if rows else []
    return "\n".join(lines + ["| " + format_row(row, header) + " |" for row in rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=["v2", "v1"])
    parser.add_argument("--sizes", nargs="+", default=PAPER_SIZES, help="H x W, e.g. 512x1024")
    parser.add_argument("--variants", nargs="+", help=f"default: CPU {CPU_VARIANTS}; GPU {GPU_VARIANTS}")
    parser.add_argument("--batch-size", type=at_least(1), default=1)
    parser.add_argument("--num-classes", type=at_least(2), default=19)
    parser.add_argument("--warmup", type=at_least(0), default=3)
    parser.add_argument("--iterations", type=at_least(1), default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-size", default="192x256", help="training crop H x W")
    parser.add_argument("--train-batch", type=at_least(2, " (BatchNorm of a training step)"), default=8)
    parser.add_argument(
        "--train-steps", type=at_least(1), default=12, help="timed steps per way, over --train-rounds blocks"
    )
    parser.add_argument("--train-rounds", type=at_least(1), default=3, help="alternating blocks of each way")
    parser.add_argument(
        "--train-config", type=Path, default=REPO / "configs" / "camvid_cpu.yaml",
        help="the recipe whose model options and precision the LightningModule runs with",
    )  # fmt: skip
    parser.add_argument(
        "--train-precision", help="instead of the recipe's, e.g. 32-true to see a CPU without native bf16"
    )
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument(
        "--checkpoint", help="trained weights (a checkpoint, a weights file or a released name) instead of random ones"
    )
    parser.add_argument(
        "--data-root",
        help="a CamVid-layout root: its val split scores each variant (with --checkpoint), its train split "
        "calibrates int8",
    )
    parser.add_argument("--val-images", type=at_least(1), help="score on the first N val images only (default: all)")
    parser.add_argument(
        "--calibration-images", type=at_least(1), default=CALIBRATION_IMAGES, help="training images that calibrate int8"
    )
    parser.add_argument(
        "--no-throughput", dest="throughput", action="store_false",
        help="leave out the OpenVINO variants' images per second with several images in flight",
    )  # fmt: skip
    parser.add_argument(
        "--benchmark-app", type=at_least(0), metavar="SECONDS", default=0,
        help="also time each OpenVINO variant's file with OpenVINO's benchmark_app for SECONDS (latency hint)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as a JSON list of objects")
    args = parser.parse_args(argv)
    for option, sizes in (("--sizes", args.sizes), ("--train-size", [args.train_size])):
        for size in sizes:
            try:
                parse_size(size)
            except argparse.ArgumentTypeError as error:
                parser.error(f"{option}: {error}")
    if args.json is not None:
        if args.json.is_dir():
            parser.error(f"--json {args.json} is a folder: give the file's path, e.g. {args.json / 'speed.json'}")
        try:
            check_writable(args.json.parent, "--json")
        except UserError as error:
            parser.error(str(error))
    device = torch.device(args.device)
    if args.variants is None:
        args.variants, skipped = supported_variants(GPU_VARIANTS if device.type == "cuda" else CPU_VARIANTS)
    else:
        skipped = []
    unknown = sorted(set(args.variants) - set(PYTORCH_VARIANTS + EXPORTED_VARIANTS + GPU_VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {PYTORCH_VARIANTS + EXPORTED_VARIANTS + GPU_VARIANTS}")
    if device.type != "cuda" and any("amp" in v for v in args.variants):
        parser.error("amp variants need a GPU (CPU autocast is bfloat16 and slower than fp32 on most CPUs)")
    if device.type == "cuda" and any(v in EXPORTED_VARIANTS for v in args.variants):
        parser.error(f"{EXPORTED_VARIANTS} are CPU runtimes: run them with --device cpu")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "disabled")
    print(f"Machine: {machine()}\n")
    if skipped:
        print(f"Left out on this machine: {', '.join(skipped)}\n")
    if args.checkpoint:
        try:
            read_weights_info(args.checkpoint)  # a missing or unreadable file: one line, before any work
        except (UserError, FileNotFoundError) as error:
            parser.error(f"--checkpoint: {error}")
    rows = []
    if not args.skip_inference:
        print(f"Inference, batch {args.batch_size}, {args.iterations} timed runs after {args.warmup} warm-up runs:\n")
        rows += inference_table(args, device)
        print(markdown([r for r in rows if r["kind"] == "inference"]) + "\n", flush=True)
        if any(r["kind"] == "throughput" for r in rows):
            print("Throughput, several images in flight:\n", flush=True)
            print(markdown([r for r in rows if r["kind"] == "throughput"]) + "\n", flush=True)
        print("Which to pick on this machine, from this run:\n" + "\n".join(which_to_pick(rows)) + "\n", flush=True)
    if not args.skip_training:
        print(f"Training step, {args.train_steps} timed steps per way in {args.train_rounds} alternating blocks:\n")
        rows += training_table(args, device)
        print(markdown([r for r in rows if r["kind"] == "train"]), flush=True)
    if args.json:
        with atomic_write(args.json) as partial:
            partial.write_text(json.dumps([{"machine": machine()} | row for row in rows], indent=1))
        print(f"\nwrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--reference-worker"]:
        reference_worker(sys.argv[2])
    else:
        main()
