"""BatchNorm statistics that describe the images a network is evaluated on.

Trained on small crops, BiSeNetV2's BatchNorm running statistics stop describing full images. Seen
in the released network: in the semantic branch's last stage, channel 31 of the first
gather-and-expansion layer's 3x3 convolution is a ReLU that has all but died. It was zero on all 96
training crops (192x256) looked at, so the six expansion channels it feeds hold a constant, and
after the next zero-padded 3x3 convolution only that constant's border pattern: a variance of about
1e-7 across crops, below BatchNorm's eps (1e-5). On full 480x360 images it fires now and then (1 of
96 training images), and a batch holding such an image has a variance of 5e-3 there, 500 to 25,000
times the crops' (with and without eps). In eval mode those values are divided by the crops'
standard deviation (3e-3 with eps) and reach the next layers hundreds of times too large. Such
channels are more likely the longer a run trains, which fits the release run's logged val mIoU
falling after 6000 steps while the training loss, computed with each batch's own statistics, kept
improving.

Training never uses the running statistics, so they can be recomputed at the evaluation size
whenever they are looked at, without changing training: :class:`BatchNormRecalibration` does that
before every validation and every checkpoint, for the weights those use: the module's, or the average
of a weight-averaging callback (Lightning's ``EMAWeightAveraging``) when the run has one.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from bisenet_pl.compat import averaged_module
from bisenet_pl.errors import check_options

BATCHNORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_layers(net: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: module for name, module in net.named_modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)}


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Recompute every BatchNorm's running statistics, in place, as the average over ``batches``
    (image tensors of at least 2 images) of their batch statistics; nothing else changes (dropout
    stays off, so no random numbers are drawn). Returns the number of images used.
    """
    norms = list(batchnorm_layers(net).values())
    momenta = [norm.momentum for norm in norms]
    was_training = net.training
    net.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over all batches
        norm.train()
    seen = 0
    try:
        for images in batches:
            net(images)
            seen += len(images)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        net.train(was_training)
    if not seen:
        raise ValueError("recalibrate_batchnorm needs at least one batch of two or more images")
    return seen


def evaluated_module(trainer: L.Trainer, pl_module: L.LightningModule) -> nn.Module:
    """The module whose weights validation and checkpoints use: while fitting with a weight-averaging
    callback, the average it keeps (swapped in for validation, saved as the checkpoint's state dict)."""
    for callback in trainer.callbacks:
        if isinstance(callback, WeightAveraging) and (average := averaged_module(callback)) is not None:
            return average
    return pl_module


def copy_batchnorm_statistics(source: nn.Module, target: nn.Module) -> None:
    targets = batchnorm_layers(target)
    for name, norm in batchnorm_layers(source).items():
        for buffer in BATCHNORM_BUFFERS:
            getattr(targets[name], buffer).copy_(getattr(norm, buffer))


class BatchNormRecalibration(Callback):
    """While fitting, recompute the BatchNorm running statistics on ``images`` whole training images
    (a fixed subset, unaugmented, at their full size) before every validation and before every
    checkpoint is written, so that the logged val/dev scores and every saved checkpoint use
    statistics of the size the network is evaluated at. Training itself is unchanged.

    Args:
        images: training images to recompute the statistics on (0: off, keep the running averages
            of the training batches).
        batch_size: images per forward pass (default: the DataModule's ``batch_size``).
    """

    def __init__(self, images: int = 64, batch_size: int | None = None) -> None:
        check_options(
            "bn_recalibration",
            images=(images, ">= 0", images >= 0),
            batch_size=(batch_size, ">= 2 (BatchNorm needs two images)", batch_size is None or batch_size >= 2),
        )
        self.images = images
        self.batch_size = batch_size
        self._recalibrated_at: int | None = None  # the global step the statistics describe
        self._reported = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if stage == "fit" and self.images and not hasattr(datamodule, "full_size_batches"):
            rank_zero_warn(
                "bn_recalibration: the data is not a bisenet_pl DataModule, so BatchNorm statistics stay the "
                "training batches' running averages (set --bn_recalibration.images=0 to silence this)"
            )
            self.images = 0

    def _recalibrate(self, trainer: L.Trainer, module: nn.Module) -> None:
        if not self.images or trainer.sanity_checking or self._recalibrated_at == trainer.global_step:
            return
        if not batchnorm_layers(module):  # nothing to recompute: spare the forward passes
            return
        datamodule = trainer.datamodule
        batch_size = self.batch_size or max(2, datamodule.batch_size)
        start = time.perf_counter()
        device = next(module.parameters()).device
        batches = (images.to(device) for images in datamodule.full_size_batches(self.images, batch_size))
        with trainer.precision_plugin.forward_context():
            used = recalibrate_batchnorm(module, batches)
        self._recalibrated_at = trainer.global_step
        if not self._reported:
            self._reported = True
            rank_zero_info(
                f"BatchNorm statistics recomputed on {used} full-size training images in "
                f"{time.perf_counter() - start:.1f} s "
                "before each validation and checkpoint (--bn_recalibration.images)"
            )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before on_validation_epoch_start, where a weight-averaging callback swaps its average in.
        if trainer.state.fn == "fit":
            self._recalibrate(trainer, evaluated_module(trainer, pl_module))

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn != "fit":
            return
        module = evaluated_module(trainer, pl_module)
        self._recalibrate(trainer, module)
        # The checkpoint's state dict was taken before this hook: put the new statistics in it.
        saved = checkpoint.get("state_dict", {})
        for name, norm in batchnorm_layers(module).items():
            for buffer in BATCHNORM_BUFFERS:
                key = f"{name}.{buffer}"
                if key in saved:
                    saved[key] = getattr(norm, buffer).detach().clone()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The module fit leaves behind (an average's weights once a weight-averaging callback has copied them
        # in) holds statistics of the evaluation size too, for a test in the same process.
        module = evaluated_module(trainer, pl_module)
        self._recalibrate(trainer, module)
        if module is not pl_module and self.images:
            copy_batchnorm_statistics(module, pl_module)
