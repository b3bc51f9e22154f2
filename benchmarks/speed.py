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
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bisenet_pl.benchmark import count_flops, count_parameters, measure_interleaved
from bisenet_pl.deploy import export_onnx, inference_network, onnx_session
from bisenet_pl.models import BiSeNetV1, BiSeNetV2
from bisenet_pl.module import SegmentationModule

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
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads (torch {torch.__version__}, CPU)"


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
                        "network": type(net).__name__,
                        "size": size,
                        "params (M)": count_parameters(deployed) / 1e6,
                        "GFLOPs": flops / 1e9,
                        "variant": variant,
                        "mean ms": latency.mean_ms,
                        "p50 ms": latency.p50_ms,
                        "p90 ms": latency.p90_ms,
                        "p99 ms": latency.p99_ms,
                        "FPS": latency.fps,
                        "x reference": latency.fps / reference_fps,
                        "setup s": setup[variant],
                    }
                )
                print(format_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def training_table(args, device: torch.device) -> list[dict]:
    """Images/s of a training step: the LightningModule under a Trainer vs a plain loop, same
    network, loss (OHEM + 4 aux heads), optimiser and data."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    height, width = parse_size(args.train_size)
    steps, warmup = args.train_steps, args.train_warmup
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.train_batch * (steps + warmup), 3, height, width, generator=generator)
    masks = torch.randint(0, args.num_classes, (len(images), height, width), generator=generator)

    class Batches(TensorDataset):
        def __getitem__(self, index):
            image, mask = super().__getitem__(index)
            return {"image": image, "mask": mask}

    def loader():
        return DataLoader(Batches(images, masks), batch_size=args.train_batch, shuffle=False, num_workers=0)

    def module():
        torch.manual_seed(0)
        return SegmentationModule(net=BiSeNetV2, num_classes=args.num_classes, warmup_steps=10)

    precision = "16-mixed" if device.type == "cuda" else "32-true"
    rows: list[dict] = []

    def plain_loop() -> float:
        """Plain PyTorch: the same network, loss, optimiser and schedule, written out by hand."""
        plain = module().to(device)
        plain.trainer = L.Trainer(max_steps=steps + warmup, logger=False, enable_checkpointing=False)
        optimisers = plain.configure_optimizers()  # reads the schedule length from the trainer
        optimiser, scheduler = optimisers["optimizer"], optimisers["lr_scheduler"]["scheduler"]
        scaler = torch.amp.GradScaler(enabled=device.type == "cuda")
        plain.train()
        times = []
        for step, batch in enumerate(loader()):
            start = time.perf_counter()
            x, y = batch["image"].to(device, non_blocking=True), batch["mask"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                outputs = plain.net(x)
                aux = zip(plain.aux_weights, outputs[1:])
                loss = plain.criterion(outputs[0], y) + sum(w * plain.criterion(o, y) for w, o in aux)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - start)
        return args.train_batch * len(times) / sum(times)

    # Plain before and after the Trainer: their spread shows how much the machine drifted.
    rows.append({"training": "plain PyTorch loop (before)", "images/s": plain_loop()})

    class StepTimer(L.Callback):
        def __init__(self):
            self.times, self.start = [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if device.type == "cuda":
                torch.cuda.synchronize()
            if batch_idx >= warmup:
                self.times.append(time.perf_counter() - self.start)

    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps + warmup, accelerator=device.type, devices=1, precision=precision, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
        limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module(), train_dataloaders=loader())
    rows.append({"training": "LightningModule (Trainer)", "images/s": args.train_batch * len(timer.times) / sum(timer.times)})
    rows.append({"training": "plain PyTorch loop (after)", "images/s": plain_loop()})
    plain_mean = (rows[0]["images/s"] + rows[2]["images/s"]) / 2
    for row in rows:
        row["x plain"] = row["images/s"] / plain_mean
        row["setting"] = f"BiSeNetV2 train, batch {args.train_batch} x {args.train_size}, {precision}"
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
    parser.add_argument("--train-size", default="512x1024", help="training crop H x W")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-warmup", type=int, default=3)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.variants = args.variants or (GPU_VARIANTS if device.type == "cuda" else CPU_VARIANTS)
    if device.type != "cuda" and any("amp" in v for v in args.variants):
        parser.error("amp variants need a GPU (CPU autocast is bfloat16 and slower than fp32 on most CPUs)")
    warnings.filterwarnings("ignore")
    os.environ.setdefault("WANDB_MODE", "disabled")
    print(f"Machine: {machine()}\n")
    if not args.skip_inference:
        print(f"Inference, batch {args.batch_size}, {args.iterations} timed runs after {args.warmup} warm-up runs:\n")
        print(markdown(inference_table(args, device)) + "\n", flush=True)
    if not args.skip_training:
        print(f"Training step, {args.train_steps} timed steps after {args.train_warmup} warm-up steps:\n")
        print(markdown(training_table(args, device)), flush=True)


if __name__ == "__main__":
    main()
