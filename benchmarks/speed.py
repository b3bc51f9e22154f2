"""Speed of BiSeNetV1 and V2: parameters, FLOPs, latency and FPS per inference variant, and the
training-step throughput of the LightningModule against a plain PyTorch loop.

"reference" is the way CoinCheung/BiSeNet runs the network: eager fp32, NCHW, BatchNorm unfused.
Since our default networks are numerically that network, it is measured here side by side with
our variants in one run, on the same machine and the same weights.

    python benchmarks/speed.py                                  # everything this machine can run
    python benchmarks/speed.py --networks v2 --sizes 512x1024 --variants reference onnxruntime
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from bisenet_pl.benchmark import count_flops, count_parameters, cpu_description, measure_interleaved, percentile
from bisenet_pl.files import atomic_write
from bisenet_pl.deploy import export_onnx, inference_network, onnx_session
from bisenet_pl.models import BiSeNetV1, BiSeNetV2
from bisenet_pl.models.layers import Dropout
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
NETWORKS = {"v2": BiSeNetV2, "v1": BiSeNetV1}
#: The papers' resolutions (H x W): Cityscapes at half and full size, CamVid at 720x960.
PAPER_SIZES = ["512x1024", "720x960", "1024x2048"]
CPU_VARIANTS = ["reference", "channels_last", "folded", "folded+channels_last", "compile", "onnxruntime"]
GPU_VARIANTS = ["reference", "channels_last", "folded+channels_last", "amp", "compile+amp", "onnxruntime"]


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{cpu_description()}, {torch.get_num_threads()} threads (torch {torch.__version__}, CPU)"


def inference_runner(variant: str, net: torch.nn.Module, images: torch.Tensor, onnx_path: Path):
    """A zero-argument callable running one variant from images to class ids (what deployment
    needs; the reference's demo also takes the argmax), built outside the timing."""
    device = images.device
    amp = "amp" in variant
    if variant == "onnxruntime":  # exported once per network with dynamic sizes; argmax in the graph
        session = onnx_session(onnx_path, threads=torch.get_num_threads() if device.type == "cpu" else None)
        feed = {"images": images.cpu().numpy()}
        return lambda: session.run(None, feed)
    model = net.eval() if variant in ("reference", "channels_last") else inference_network(net).to(device)
    if "channels_last" in variant or "compile" in variant or amp:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if "compile" in variant:
        model = torch.compile(model)

    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            return model(images).argmax(dim=1)

    return run


def inference_table(args, device: torch.device) -> list[dict]:
    rows = []
    onnx_dir = Path(tempfile.mkdtemp(prefix="bisenet-bench-"))
    for name in args.networks:
        torch.manual_seed(0)
        net = NETWORKS[name](num_classes=args.num_classes).eval()
        onnx_path = None
        if "onnxruntime" in args.variants:
            onnx_path = export_onnx(net, onnx_dir / f"{name}.onnx", example_size=parse_size(args.sizes[0]), labels="int64")
        net = net.to(device)
        deployed = inference_network(net)
        for size in args.sizes:
            height, width = parse_size(size)
            images = torch.randn(args.batch_size, 3, height, width, device=device)
            flops = count_flops(deployed, images[:1])
            runs, setup = {}, {}
            for variant in args.variants:
                start = time.perf_counter()
                runs[variant] = inference_runner(variant, net, images, onnx_path)
                runs[variant]()  # the first call compiles or plans
                setup[variant] = time.perf_counter() - start
            latencies = measure_interleaved(runs, args.batch_size, args.warmup, args.iterations, device)
            reference_fps = latencies["reference"].fps if "reference" in latencies else float("nan")
            for variant, latency in latencies.items():
                rows.append(
                    {
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
                )
                print(format_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def recipe_options(config: Path) -> tuple[dict, str]:
    """The model options (network aside) and trainer precision of a training config."""
    recipe = yaml.safe_load(config.read_text())
    model = {k: v for k, v in recipe.get("model", {}).items() if k not in ("net", "pretrained", "backbone_weights")}
    return model, str(recipe.get("trainer", {}).get("precision", "32-true"))


def reference_ohem(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.7, ignore_index: int = 255) -> torch.Tensor:
    """OHEM cross-entropy as the reference computes it: boolean indexing, then top-k if too few."""
    min_kept = int((target != ignore_index).sum()) // 16
    losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").flatten()
    hard = losses[losses > -math.log(threshold)]
    if hard.numel() < min_kept:
        hard = losses.topk(min_kept).values
    return hard.mean()


def with_torch_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """The reference draws dropout masks with torch's Bernoulli sampler (``nn.Dropout``), not ours."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
    return model


def training_table(args, device: torch.device) -> list[dict]:
    """Time per training step (BiSeNetV2, main + 4 aux losses, the warm-up and poly schedule) of
    the reference's way (a plain loop: fp32, NCHW, SGD, its OHEM, torch's dropout) against our
    LightningModule under a Trainer with a recipe's settings (``--train-config``: precision,
    channels-last, loss, optimiser, class and aux weights), and a plain loop with the recipe's
    settings (what the Trainer costs), in alternating blocks. Each step is timed from the end of
    the previous one, data included."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    from bisenet_pl.trainer import Trainer, auto_precision

    height, width = parse_size(args.train_size)
    model_options, precision = recipe_options(args.train_config)
    precision = args.train_precision or precision
    if precision == "auto":
        precision = auto_precision(device.type)[0]
    # The recipe's dataset decides the class count where its class weights give it away.
    num_classes = len(model_options["class_weights"]) if model_options.get("class_weights") else args.num_classes
    rounds = max(1, min(args.train_rounds, args.train_steps))
    per_block = [args.train_steps // rounds + (1 if r < args.train_steps % rounds else 0) for r in range(rounds)]
    generator = torch.Generator().manual_seed(0)
    count = args.train_batch * (max(per_block) + 1)
    images = torch.randn(count, 3, height, width, generator=generator)
    masks = torch.randint(0, num_classes, (count, height, width), generator=generator)

    class Batches(TensorDataset):
        def __getitem__(self, index):
            image, mask = super().__getitem__(index)
            return {"image": image, "mask": mask}

    def loader(steps: int) -> DataLoader:
        subset = Batches(images[: steps * args.train_batch], masks[: steps * args.train_batch])
        return DataLoader(subset, batch_size=args.train_batch, shuffle=False, num_workers=0)

    def module(**options) -> SegmentationModule:
        torch.manual_seed(0)
        return SegmentationModule(net=BiSeNetV2, num_classes=num_classes, **options)

    def trainer(steps: int, precision: str, callbacks=()) -> L.Trainer:
        return Trainer(
            max_steps=steps, accelerator=device.type, devices=1, precision=precision, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            callbacks=list(callbacks), limit_val_batches=0, num_sanity_val_steps=0,
        )  # fmt: skip

    def plain_block(model: SegmentationModule, steps: int, reference: bool) -> list[float]:
        """A plain loop; the reference's way: fp32, NCHW, its OHEM; else the recipe's settings."""
        model.trainer = trainer(steps + 1, "32-true" if reference else precision)  # for the schedule's length
        model.configure_model()  # channels-last, as the Trainer would
        amp_dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(model.trainer.precision)
        optimisers = model.configure_optimizers()
        optimiser, scheduler = optimisers["optimizer"], optimisers["lr_scheduler"]["scheduler"]
        scaler = torch.amp.GradScaler(enabled=amp_dtype == torch.float16)
        criterion = reference_ohem if reference else model.criterion
        model.train()
        times, last = [], time.perf_counter()
        for batch in loader(steps + 1):
            x, y = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(x)
                aux = zip(model.aux_weights, outputs[1:])
                loss = criterion(outputs[0], y) + sum(w * criterion(o, y) for w, o in aux)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            times.append(now - last)
            last = now
        return times[1:]  # the first step of a block is untimed

    class StepTimer(L.Callback):
        """Time from one step's end to the next's: fetching, step, logging, everything."""

        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    def lightning_block(model: SegmentationModule, steps: int) -> list[float]:
        timer = StepTimer()
        trainer(steps + 1, precision, [timer]).fit(model, train_dataloaders=loader(steps + 1))
        return [b - a for a, b in zip(timer.ends, timer.ends[1:])]

    recipe = f"{args.train_config.name}: {precision}{', channels-last' if model_options.get('channels_last') else ''}"
    variants = {
        "reference (plain loop, fp32, NCHW)": (with_torch_dropout(module()), lambda m, n: plain_block(m, n, reference=True)),
        f"plain loop ({recipe})": (module(**model_options), lambda m, n: plain_block(m, n, reference=False)),
        f"LightningModule ({recipe})": (module(**model_options), lightning_block),
    }
    for model, block in variants.values():  # untimed: first-call set-up of each way
        block(model.to(device), 1)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for steps in per_block:
        for name, (model, block) in variants.items():
            times[name] += block(model, steps)
    reference_ms = 1000 * statistics.fmean(times[next(iter(variants))])
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


def format_row(row: dict) -> str:
    return " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row.values())


def markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + format_row(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", nargs="+", choices=list(NETWORKS), default=["v2", "v1"])
    parser.add_argument("--sizes", nargs="+", default=PAPER_SIZES, help="H x W, e.g. 512x1024")
    parser.add_argument("--variants", nargs="+", help=f"default: CPU {CPU_VARIANTS}; GPU {GPU_VARIANTS}")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-size", default="192x256", help="training crop H x W")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=12, help="timed steps per way, over --train-rounds blocks")
    parser.add_argument("--train-rounds", type=int, default=3, help="alternating blocks of each way")
    parser.add_argument(
        "--train-config", type=Path, default=REPO / "configs" / "camvid_cpu.yaml",
        help="the recipe whose model options and precision the LightningModule runs with",
    )  # fmt: skip
    parser.add_argument("--train-precision", help="instead of the recipe's, e.g. 32-true to see a CPU without native bf16")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the rows as a JSON list of objects")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.variants = args.variants or (GPU_VARIANTS if device.type == "cuda" else CPU_VARIANTS)
    if device.type != "cuda" and any("amp" in v for v in args.variants):
        parser.error("amp variants need a GPU (CPU autocast is bfloat16 and slower than fp32 on most CPUs)")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "disabled")
    print(f"Machine: {machine()}\n")
    rows = []
    if not args.skip_inference:
        print(f"Inference, batch {args.batch_size}, {args.iterations} timed runs after {args.warmup} warm-up runs:\n")
        rows += inference_table(args, device)
        print(markdown([r for r in rows if r["kind"] == "inference"]) + "\n", flush=True)
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
