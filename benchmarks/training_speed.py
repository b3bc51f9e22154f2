"""The training rows of benchmarks/speed.py: a step of the reference's way (its own process, its
allocator, its OHEM) against the LightningModule under a Trainer with a recipe's settings, and a plain loop
with the same settings, in alternating blocks."""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from speed_table import format_row, parse_size

from bisenet_pl.measure import percentile
from bisenet_pl.models import BiSeNetV2
from bisenet_pl.models.layers import Dropout, SegmentHead
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
#: The recipe whose model options and precision the LightningModule runs with, unless --train-config says another.
RECIPE_CONFIG = REPO / "configs" / "camvid_cpu.yaml"


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


def heads_loss(model: SegmentationModule, criterion: Callable, outputs: tuple, target: torch.Tensor) -> torch.Tensor:
    """The training loss of a step: the main head's plus each booster head's, weighted as the module weights them."""
    aux = zip(model.aux_weights, outputs[1:])
    return criterion(outputs[0], target) + sum(w * criterion(o, target) for w, o in aux)


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
                loss = heads_loss(model, criterion, model(x), y)
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
        command = [sys.executable, str(Path(__file__).resolve()), json.dumps(settings)]
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
    from bisenet_pl.precision import CPU_CANDIDATES, candidate_name, fastest_cpu_precision, parse_candidate
    from bisenet_pl.trainer import auto_precision

    keep_freed_memory()  # as bisenet-pl does, before anything is timed
    height, width = parse_size(args.train_size)
    model_options, precision = recipe_options(args.train_config)
    precision = args.train_precision or precision
    # The recipe's dataset decides the class count where its class weights give it away.
    class_weights = (model_options.get("loss") or {}).get("class_weights")
    num_classes = len(class_weights) if class_weights else args.num_classes
    channels_last = model_options.get("channels_last", False)
    if precision == "auto" and device.type != "cpu":
        precision = auto_precision(device.type)[0]
    considered, not_timed = [], []  # the LightningModule's rows: each candidate auto weighed, else the given one
    if device.type == "cpu" and "auto" in (precision, channels_last):
        torch.manual_seed(0)
        probe = SegmentationModule(net=BiSeNetV2, num_classes=num_classes, **model_options)
        candidates = CPU_CANDIDATES if precision == "auto" else (precision,)
        choice = fastest_cpu_precision(probe, args.train_batch, (height, width), candidates=candidates)
        print(choice.describe(), file=sys.stderr, flush=True)
        considered = [name for name, ms in choice.step_ms.items() if math.isfinite(ms)]
        not_timed = [name for name in choice.step_ms if name not in considered]
        chosen = choice.chosen
    else:
        chosen = candidate_name(precision, channels_last in (True, "auto"))  # auto here: a GPU, channels-last
        considered = [chosen]
    rounds = max(1, min(args.train_rounds, args.train_steps))
    per_block = [args.train_steps // rounds + (1 if r < args.train_steps % rounds else 0) for r in range(rounds)]
    settings = {
        "device": str(device), "size": args.train_size, "batch": args.train_batch, "num_classes": num_classes,
        "max_block": max(per_block),
    }  # fmt: skip
    bench = TrainingBench(settings)

    def recipe(candidate: str) -> str:
        auto = " (auto's choice)" if len(considered) + len(not_timed) > 1 and candidate == chosen else ""
        return f"{args.train_config.name}: {candidate}{auto}"

    def module(candidate: str) -> SegmentationModule:
        return bench.module(**model_options | {"channels_last": parse_candidate(candidate)[1]}).to(device)

    plain = module(chosen)
    chosen_precision = parse_candidate(chosen)[0]
    ours: dict[str, Callable[[int], list[float]]] = {
        f"plain loop ({recipe(chosen)})": lambda n: bench.plain_block(plain, n, chosen_precision, reference=False)
    }
    for candidate in considered:
        ours[f"LightningModule ({recipe(candidate)})"] = lambda n, model=module(candidate), candidate=candidate: (
            bench.lightning_block(model, n, parse_candidate(candidate)[0])
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
    for candidate in not_timed:  # what auto's forward pass ruled out, without a time
        variant = f"LightningModule ({recipe(candidate)}, not timed: a forward pass over 2x the fastest's)"
        rows.append({"kind": "train", "network": "BiSeNetV2", "size": args.train_size, "batch": args.train_batch,
                     "variant": variant})  # fmt: skip
    return rows


if __name__ == "__main__":  # the reference's process of ReferenceProcess
    reference_worker(sys.argv[1])
