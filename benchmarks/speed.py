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
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from inference_speed import (
    CPU_VARIANTS,
    EXPORTED_VARIANTS,
    GPU_VARIANTS,
    NETWORKS,
    PAPER_SIZES,
    PYTORCH_VARIANTS,
    inference_table,
    supported_variants,
)
from speed_table import machine, markdown, parse_size, which_to_pick
from training_speed import RECIPE_CONFIG, training_table

from bisenet_pl.deploy.calibration import CALIBRATION_IMAGES
from bisenet_pl.errors import UserError
from bisenet_pl.files import atomic_write, check_writable
from bisenet_pl.models.weights import read_weights_info


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
        "--train-config", type=Path, default=RECIPE_CONFIG,
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
    main()
