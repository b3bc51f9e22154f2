"""The LightningModule: training, validation and test steps of a segmentation network, their losses and logging
(the optimiser, metrics and weight loading live in optim.py, metrics.py and pretrained.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection

from bisenet_pl.errors import ConfigError, NonFiniteLossError, check_options
from bisenet_pl.evaluation import EvalMode, EvaluationProtocol, class_scores
from bisenet_pl.losses import LossName, build_loss
from bisenet_pl.metrics import epoch_results, segmentation_metrics
from bisenet_pl.models.base import build_network, network_spec
from bisenet_pl.models.weights import (
    check_checkpoint_fits,
)
from bisenet_pl.optim import OptimizerName, optimizer_and_schedule, sync_learning_rates
from bisenet_pl.pretrained import PretrainedWeights


class SegmentationModule(PretrainedWeights, L.LightningModule):
    """BiSeNet training and evaluation.

    Args:
        net: the network class (``bisenet_pl.models.BiSeNetV2`` or ``BiSeNetV1``) with its
            options; it is called with ``num_classes``. No default: a default class would lend
            its options to another class chosen in YAML.
        num_classes: number of classes (linked from the DataModule by the CLI).
        ignore_index: label of ignored pixels (linked from the DataModule).
        class_names: class names for per-class metrics (linked from the DataModule).
        loss: ``ce``, ``ohem`` (the reference), ``dice``, or a sum such as ``ohem+dice``.
        ohem_threshold: OHEM keeps pixels predicted below this probability.
        ohem_min_kept_fraction: OHEM keeps at least this share of the valid pixels.
        class_weights: per-class cross-entropy weights (e.g. median-frequency weights from
            ``bisenet-pl stats``).
        aux_weights: weight of each auxiliary head's loss, one number for all or one per head
            (in the network's head order). A head with weight 0 is removed and never computed.
        optimizer: ``sgd`` (the reference's, with ``momentum``) or ``adamw`` (betas 0.9, 0.999),
            both with the warm-up and poly schedule below.
        lr: base learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay, not applied to BatchNorm parameters and biases.
        head_lr_multiplier: learning-rate factor of the heads (the network's ``head_modules``).
        warmup_steps: exponential warm-up steps.
        warmup_ratio: learning-rate factor at the first step.
        poly_power: power of the poly decay over ``trainer.estimated_stepping_batches``.
        pretrained: initial weights: a checkpoint of this project, a network state dict, or a
            CoinCheung/BiSeNet ``.pth`` (converted). Classifiers of another class count are
            re-initialised.
        backbone_weights: BiSeNetV1 only: ImageNet ResNet weights for training,
            ``imagenet`` (torchvision's, downloaded once), a path or a URL.
        compile: ``torch.compile`` the network.
        channels_last: run the network in channels-last memory format.
        eval_mode: how validation, test and predict score an image, as the reference's
            evaluator: ``ss`` (single scale), ``ssc`` (single-scale sliding-window crops),
            ``msf`` (multi-scale with flip), ``mscf`` (multi-scale crops with flip).
        eval_scales: image scales (default: 1.0 for ss/ssc, 0.5-1.75 for msf/mscf).
        eval_flip: add flipped images (default: on for msf/mscf).
        eval_crop_size: sliding-window size (H, W) for ssc/mscf.
        eval_crop_stride: window stride as a fraction of the crop size.
    """

    def __init__(
        self,
        net: Callable[[int], nn.Module],
        num_classes: int = 19,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        loss: LossName = "ohem",
        ohem_threshold: float = 0.7,
        ohem_min_kept_fraction: float = 1 / 16,
        class_weights: list[float] | None = None,
        aux_weights: float | list[float] = 1.0,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        head_lr_multiplier: float = 10.0,
        warmup_steps: int = 1000,
        warmup_ratio: float = 0.1,
        poly_power: float = 0.9,
        pretrained: str | None = None,
        backbone_weights: str | None = None,
        compile: bool = False,
        channels_last: bool = False,
        eval_mode: EvalMode = "ss",
        eval_scales: list[float] | None = None,
        eval_flip: bool | None = None,
        eval_crop_size: tuple[int, int] = (1024, 1024),
        eval_crop_stride: float = 2 / 3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_module_options(self.hparams)
        if not isinstance(self.hparams.net, dict):  # plain data in checkpoints, not a pickled callable
            self.hparams.net = network_spec(net)
        self.net = build_network(net, num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(self.class_names)} names for {num_classes} classes")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ConfigError(f"model.class_weights has {len(class_weights)} values for {num_classes} classes")
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.criterion = build_loss(loss, ignore_index, ohem_threshold, ohem_min_kept_fraction, weights)
        self.aux_names, self.aux_weights = self.net.keep_weighted_aux_heads(aux_weights)
        try:
            self.evaluation = EvaluationProtocol(
                eval_mode,
                tuple(eval_scales) if eval_scales else None,
                eval_flip,
                tuple(eval_crop_size),
                eval_crop_stride,
            )
        except ValueError as error:
            raise ConfigError(f"model.eval_*: {error}") from None
        metrics = segmentation_metrics(num_classes, ignore_index)
        self.val_metrics = metrics.clone(prefix="val/")
        self.dev_metrics = metrics.clone(prefix="dev/")  # a held-out split validated beside val
        self.test_metrics = metrics.clone(prefix="test/")
        #: The last epoch's confusion matrix per stage (rows: target, columns: prediction).
        self.confusion_matrices: dict[str, torch.Tensor] = {}
        self._compiled = False

    def setup(self, stage: str) -> None:
        crop_size = getattr(self.trainer.datamodule, "crop_size", None) if self._trainer else None
        if stage == "fit" and crop_size:  # the model summary's FLOPs and sizes: one training crop
            self.example_input_array = torch.zeros(1, 3, *crop_size)
        self.load_initial_weights(stage)

    def on_train_start(self) -> None:
        for config in self.trainer.lr_scheduler_configs:  # resumed: this run's schedule sets the next rate
            sync_learning_rates(config.scheduler)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Dropout draws from the global RNG: a resumed run continues its stream exactly.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_states"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the RNG state; refuse, in words, a checkpoint of another network or class count."""
        states = checkpoint.get("rng_states", {})
        if "torch" in states:
            torch.set_rng_state(states["torch"])
        if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        # The schedule is this run's (trainer.max_steps may have grown since): the step count comes from
        # the checkpoint, the schedule's length and warm-up not (LambdaLR would restore the old run's).
        for scheduler in checkpoint.get("lr_schedulers", []):
            if "lr_lambdas" in scheduler:
                scheduler["lr_lambdas"] = [None] * len(scheduler["lr_lambdas"])
        theirs = checkpoint.get("state_dict", {})
        check_checkpoint_fits(self.state_dict(), theirs, f"net.{self.net.classifier_weight}", self.num_classes)

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and not self._compiled:  # configure_model runs for every trainer call
            self.net.compile()
            self._compiled = True

    # Steps.
    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.hparams.channels_last:
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
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at step {self.global_step}: lower model.lr, "
                "use precision 32 or bf16-mixed instead of 16-mixed, or check the data for corrupt images"
            )
        self.log("train/loss_main", main_loss, batch_size=images.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _evaluation_step(self, batch: dict, metrics: MetricCollection, stage: str) -> None:
        scores = class_scores(self, batch["image"], self.evaluation)
        if self.evaluation.is_plain:  # the scores are logits: the loss means what it does in training
            loss = self.criterion(scores, batch["mask"])
            self.log(f"{stage}/loss", loss, batch_size=scores.shape[0], sync_dist=True, add_dataloader_idx=False)
        metrics.update(scores.argmax(dim=1), batch["mask"])

    def validation_splits(self) -> list[str]:
        """The names of the validation loaders, in order: the DataModule's ``val_splits``
        (``val``, and ``dev`` where one is held out), else ``val``."""
        datamodule = self.trainer.datamodule if self._trainer else None
        return list(getattr(datamodule, "val_splits", ["val"]))

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        split = self.validation_splits()[dataloader_idx]
        self._evaluation_step(batch, self.dev_metrics if split == "dev" else self.val_metrics, split)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, self.test_metrics, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Predicted class ids (N, H, W), the class scores they come from (N, C, H, W; see
        :func:`bisenet_pl.evaluation.probabilities`) and the batch's identifiers (``path``, and
        ``frame`` and ``fps`` for video)."""
        scores = class_scores(self, batch["image"], self.evaluation)
        return {"prediction": scores.argmax(dim=1), "scores": scores} | {
            key: value for key, value in batch.items() if key not in ("image", "mask")
        }

    def _log_epoch_metrics(self, metrics: MetricCollection, stage: str) -> None:
        scalars, self.confusion_matrices[stage] = epoch_results(metrics, stage, self.class_names)
        # Already reduced over processes by torchmetrics: every rank holds the same values.
        self.log_dict(scalars, sync_dist=True, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        for split in self.validation_splits():
            self._log_epoch_metrics(self.dev_metrics if split == "dev" else self.val_metrics, split)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics, "test")

    # Optimisation.
    def configure_optimizers(self) -> dict:
        options = ("optimizer", "lr", "momentum", "weight_decay", "head_lr_multiplier", "warmup_steps", "warmup_ratio")
        recipe = {name: self.hparams[name] for name in options} | {"poly_power": self.hparams.poly_power}
        return optimizer_and_schedule(self.net, int(self.trainer.estimated_stepping_batches), **recipe)


def _as_list(value: float | Sequence[float]) -> list[float]:
    return [value] if isinstance(value, (int, float)) else list(value)


#: The range of each numeric option of the module: (in words, test).
OPTION_RANGES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "lr": ("> 0", lambda v: v > 0),
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": (">= 0", lambda v: v >= 0),
    "head_lr_multiplier": ("> 0", lambda v: v > 0),
    "warmup_steps": (">= 0", lambda v: v >= 0),
    "warmup_ratio": ("in (0, 1]", lambda v: 0 < v <= 1),
    "poly_power": (">= 0", lambda v: v >= 0),
    "ohem_threshold": ("in (0, 1)", lambda v: 0 < v < 1),
    "ohem_min_kept_fraction": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "aux_weights": ("numbers >= 0", lambda v: all(w >= 0 for w in _as_list(v))),
    "class_weights": ("numbers >= 0", lambda v: all(w >= 0 for w in _as_list(v or []))),
    "eval_crop_size": ("[height, width], each >= 1", lambda v: len(v) == 2 and min(v) >= 1),
}


def check_module_options(options: Mapping) -> None:
    """The module's numeric options in their ranges (a one-line error naming the option otherwise)."""
    checks = {}
    for name, (words, test) in OPTION_RANGES.items():
        value = list(options[name]) if name == "eval_crop_size" else options[name]
        checks[name] = (value, words, test(value))
    check_options("model", **checks)
