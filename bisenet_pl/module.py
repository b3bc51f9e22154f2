"""The LightningModule: training, validation and test steps of a segmentation network, their losses and logging
(the optimiser, metrics and weight loading live in optim.py, metrics.py and pretrained.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from bisenet_pl.errors import ConfigError
from bisenet_pl.evaluation import EvaluationProtocol, class_scores
from bisenet_pl.losses import LossOptions, check_finite
from bisenet_pl.metrics import epoch_results, segmentation_metrics
from bisenet_pl.models.base import build_network, network_spec
from bisenet_pl.models.weights import check_checkpoint_fits
from bisenet_pl.module_options import module_groups, plain
from bisenet_pl.optim import OptimizerOptions, optimizer_and_schedule, sync_learning_rates
from bisenet_pl.precision import fastest_cpu_precision
from bisenet_pl.pretrained import PretrainedWeights
from bisenet_pl.resume_state import keep_this_runs_schedule, restore_random_state, save_random_state


class SegmentationModule(PretrainedWeights, L.LightningModule):
    """BiSeNet training and evaluation.

    Args:
        net: the network class (``bisenet_pl.models.BiSeNetV2`` or ``BiSeNetV1``) with its
            options; it is called with ``num_classes``. No default: a default class would lend
            its options to another class chosen in YAML.
        num_classes: number of classes (linked from the DataModule by the CLI).
        ignore_index: label of ignored pixels (linked from the DataModule).
        class_names: class names for per-class metrics (linked from the DataModule).
        loss: the loss of every head and the aux heads' weights (:class:`~bisenet_pl.losses.LossOptions`).
        optimizer: the optimiser and schedule (:class:`~bisenet_pl.optim.OptimizerOptions`).
        evaluation: how validation, test and predict score an image, as the reference's evaluator
            (:class:`~bisenet_pl.evaluation.EvaluationProtocol`).
        pretrained: initial weights: a checkpoint of this project, a network state dict, or a
            CoinCheung/BiSeNet ``.pth`` (converted). Classifiers of another class count are
            re-initialised.
        backbone_weights: BiSeNetV1 only: ImageNet ResNet weights for training,
            ``imagenet`` (torchvision's, downloaded once), a path or a URL.
        compile: ``torch.compile`` the network.
        channels_last: run the network in channels-last memory format; ``auto``: in the format a
            measurement finds faster on a CPU (see :mod:`bisenet_pl.precision`), channels-last on a GPU.
            The command line measures a fit's validations apart from its training steps: on an AVX2-only
            CPU training stepped faster in NCHW, forward passes at the images' size in channels-last.
        renamed: the options' former flat names (``lr=...``, see :mod:`bisenet_pl.module_options`),
            moved into their groups with a warning.
    """

    def __init__(
        self,
        net: Callable[[int], nn.Module],
        num_classes: int = 19,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        loss: LossOptions = LossOptions(),
        optimizer: OptimizerOptions = OptimizerOptions(),
        evaluation: EvaluationProtocol = EvaluationProtocol(),
        pretrained: str | None = None,
        backbone_weights: str | None = None,
        compile: bool = False,
        channels_last: bool | Literal["auto"] = False,
        **renamed: Any,
    ) -> None:
        super().__init__()
        groups = module_groups({"loss": loss, "optimizer": optimizer, "evaluation": evaluation}, renamed)
        self.loss_options, self.optimizer_options, self.evaluation = groups.values()
        self.save_hyperparameters()
        for name in renamed:  # saved under their new names only
            self.hparams.pop(name, None)
        # Plain data in checkpoints (they load with weights_only=True), not pickled classes.
        self.hparams.update({name: plain(group) for name, group in groups.items()})
        if not isinstance(self.hparams.net, dict):
            self.hparams.net = network_spec(net)
        self.net = build_network(net, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(self.class_names)} names for {num_classes} classes")
        self.criterion = self.loss_options.build(num_classes, ignore_index)
        self.aux_names, self.aux_weights = self.net.keep_weighted_aux_heads(self.loss_options.aux_weights)
        metrics = segmentation_metrics(num_classes, ignore_index)  # dev: a held-out split validated beside val
        self.metrics = nn.ModuleDict({split: metrics.clone(prefix=f"{split}/") for split in ("val", "dev", "test")})
        #: The last epoch's confusion matrix per stage (rows: target, columns: prediction).
        self.confusion_matrices: dict[str, torch.Tensor] = {}
        self._compiled = False
        #: ``channels_last="auto"`` resolved: by the command line's measurement, else when a Trainer sets up.
        self.measured_channels_last: bool | None = None
        #: The same for a fit's validations, where the command line measured them apart (else as training).
        self.measured_eval_channels_last: bool | None = None
        self._channels_last_now = False  # the network's memory format at present

    @property
    def uses_channels_last(self) -> bool:
        setting = self.hparams.channels_last
        return bool(self.measured_channels_last) if setting == "auto" else bool(setting)

    @property
    def validates_channels_last(self) -> bool:
        """The memory format of a fit's validations: measured apart where ``channels_last=auto`` (the command
        line's), else training's."""
        if self.hparams.channels_last == "auto" and self.measured_eval_channels_last is not None:
            return self.measured_eval_channels_last
        return self.uses_channels_last

    def _to_memory_format(self, channels_last: bool) -> None:
        self.net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self._channels_last_now = channels_last

    def _switches_format_to_validate(self) -> bool:
        # Not under torch.compile (a recompilation each time) or several processes (DDP holds views of the
        # parameters); the format a run validates in is then the one it trains in.
        return (
            self.validates_channels_last != self.uses_channels_last
            and not self._compiled
            and self.trainer.world_size == 1
        )

    def on_validation_model_eval(self) -> None:
        super().on_validation_model_eval()
        if self._switches_format_to_validate():
            self._to_memory_format(self.validates_channels_last)

    def on_validation_model_train(self) -> None:
        if self._switches_format_to_validate():
            self._to_memory_format(self.uses_channels_last)
        super().on_validation_model_train()

    def setup(self, stage: str) -> None:
        crop_size = getattr(self.trainer.datamodule, "crop_size", None) if self._trainer else None
        if stage == "fit" and crop_size:  # the model summary's FLOPs and sizes: one training crop
            self.example_input_array = torch.zeros(1, 3, *crop_size)
        self.load_initial_weights(stage)

    def on_train_start(self) -> None:
        for config in self.trainer.lr_scheduler_configs:  # resumed: this run's schedule sets the next rate
            sync_learning_rates(config.scheduler)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_random_state(checkpoint)  # dropout's stream continues exactly on resume

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the random streams; refuse, in words, a checkpoint of another network or class count."""
        restore_random_state(checkpoint)
        keep_this_runs_schedule(checkpoint)
        theirs = checkpoint.get("state_dict", {})
        check_checkpoint_fits(self.state_dict(), theirs, f"net.{self.net.classifier_weight}", self.num_classes)

    def configure_model(self) -> None:
        # Lightning's load_from_checkpoint calls this hook without a Trainer: NCHW until one measures.
        if self.hparams.channels_last == "auto" and self.measured_channels_last is None and self._trainer:
            self.measured_channels_last = self._faster_memory_format()
        if self.uses_channels_last:
            self._to_memory_format(True)
        if self.hparams.compile and not self._compiled:  # configure_model runs for every trainer call
            self.net.compile()
            self._compiled = True

    def use_measured_memory_format(self, channels_last: bool | None, validation: bool | None = None) -> None:
        """``channels_last=auto``: run in the memory format a measurement chose (the command line's); a fit's
        validations in ``validation``'s where that was measured too."""
        if self.hparams.channels_last == "auto":
            self.measured_channels_last = channels_last
            self.measured_eval_channels_last = validation

    def _faster_memory_format(self) -> bool:
        """``channels_last=auto`` where the command line has not measured it (a Trainer set up in Python):
        channels-last on a GPU; on a CPU the faster format in the Trainer's precision at the DataModule's
        batch and crop, or NCHW where there is no DataModule with both to measure with."""
        if self.trainer.strategy.root_device.type != "cpu":  # the module is moved there after this hook
            rank_zero_info("model.channels_last=auto: channels-last, as convolutions prefer it on a GPU")
            return True
        data = self.trainer.datamodule
        batch, size = getattr(data, "batch_size", None), getattr(data, "crop_size", None)
        if not (batch and size):
            rank_zero_info("model.channels_last=auto: NCHW, as there is no DataModule's batch_size and crop_size")
            return False
        choice = fastest_cpu_precision(self, max(2, batch), tuple(size), candidates=(str(self.trainer.precision),))
        rank_zero_info(replace(choice, setting="model.channels_last=auto").describe())
        return bool(choice.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self._channels_last_now:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"]
        outputs = self(images)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        main_loss = self.criterion(outputs[0], masks)
        loss = main_loss
        for name, weight, logits in zip(self.aux_names, self.aux_weights, outputs[1:]):
            aux_loss = self.criterion(logits, masks)
            self.log(f"train/loss_aux_{name}", aux_loss, batch_size=images.shape[0])
            loss = loss + weight * aux_loss
        check_finite(loss, self.global_step)
        self.log("train/loss_main", main_loss, batch_size=images.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _evaluation_step(self, batch: dict, split: str) -> None:
        scores = class_scores(self, batch["image"], self.evaluation)
        if self.evaluation.is_plain:  # the scores are logits: the loss means what it does in training
            loss = self.criterion(scores, batch["mask"])
            self.log(f"{split}/loss", loss, batch_size=scores.shape[0], sync_dist=True, add_dataloader_idx=False)
        self.metrics[split].update(scores.argmax(dim=1), batch["mask"])

    def validation_splits(self) -> list[str]:
        """The names of the validation loaders, in order: the DataModule's ``val_splits``
        (``val``, and ``dev`` where one is held out), else ``val``."""
        datamodule = self.trainer.datamodule if self._trainer else None
        return list(getattr(datamodule, "val_splits", ["val"]))

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluation_step(batch, self.validation_splits()[dataloader_idx])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Predicted class ids (N, H, W), the class scores they come from (N, C, H, W; see
        :func:`bisenet_pl.evaluation.probabilities`) and the batch's identifiers (``path``, and
        ``frame`` and ``fps`` for video)."""
        scores = class_scores(self, batch["image"], self.evaluation)
        return {"prediction": scores.argmax(dim=1), "scores": scores} | {
            key: value for key, value in batch.items() if key not in ("image", "mask")
        }

    def _log_epoch_metrics(self, split: str) -> None:
        scalars, self.confusion_matrices[split] = epoch_results(self.metrics[split], split, self.class_names)
        # Already reduced over processes by torchmetrics: every rank holds the same values.
        self.log_dict(scalars, sync_dist=True, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        for split in self.validation_splits():
            self._log_epoch_metrics(split)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def configure_optimizers(self) -> dict:
        return optimizer_and_schedule(self.net, int(self.trainer.estimated_stepping_batches), self.optimizer_options)
