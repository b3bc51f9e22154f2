"""The LightningModule: a BiSeNet network, its main and auxiliary losses, metrics, optimiser."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex

from bisenet_pl.errors import ConfigError, NonFiniteLossError, check_options
from bisenet_pl.inference import EvalMode, EvaluationProtocol, class_scores
from bisenet_pl.losses import LossName, build_loss
from bisenet_pl.models.base import SegmentationNetwork, network_from_spec, network_spec
from bisenet_pl.models.hub import save_pretrained
from bisenet_pl.models.weights import (
    WeightsInfo,
    check_checkpoint_fits,
    load_network_weights,
    read_state_dict,
    read_weights_info,
)

#: The longest warm-up a run gets, as a share of its steps: a warm-up as long as the run would
#: never reach the learning rate nor decay it (1000 warm-up steps in a 400-step run).
MAX_WARMUP_FRACTION = 0.1


def max_warmup_steps(total_steps: int) -> int:
    return int(total_steps * MAX_WARMUP_FRACTION)


class WarmupPolyLR:
    """LR factor per step: exponential warm-up from ``warmup_ratio`` to 1 over ``warmup_steps``,
    then poly(``power``) decay to 0 at ``total_steps`` (the reference's WarmupPolyLrScheduler).

    A callable object rather than a lambda so that it is saved with the scheduler state.
    """

    def __init__(
        self, total_steps: int, warmup_steps: int = 1000, warmup_ratio: float = 0.1, power: float = 0.9
    ) -> None:
        self.total_steps = max(1, total_steps)
        self.warmup_steps = min(warmup_steps, max_warmup_steps(self.total_steps))
        self.warmup_ratio = warmup_ratio
        self.power = power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_ratio ** (1 - step / self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return max(0.0, 1 - progress) ** self.power


class SegmentationModule(L.LightningModule):
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
        optimizer: Literal["sgd", "adamw"] = "sgd",
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
        check_options(
            "model",
            lr=(lr, "> 0", lr > 0),
            momentum=(momentum, "in [0, 1)", 0 <= momentum < 1),
            weight_decay=(weight_decay, ">= 0", weight_decay >= 0),
            head_lr_multiplier=(head_lr_multiplier, "> 0", head_lr_multiplier > 0),
            warmup_steps=(warmup_steps, ">= 0", warmup_steps >= 0),
            warmup_ratio=(warmup_ratio, "in (0, 1]", 0 < warmup_ratio <= 1),
            poly_power=(poly_power, ">= 0", poly_power >= 0),
            ohem_threshold=(ohem_threshold, "in (0, 1)", 0 < ohem_threshold < 1),
            ohem_min_kept_fraction=(ohem_min_kept_fraction, "in [0, 1]", 0 <= ohem_min_kept_fraction <= 1),
            aux_weights=(aux_weights, "numbers >= 0", all(w >= 0 for w in _as_list(aux_weights))),
            class_weights=(class_weights, "numbers >= 0", all(w >= 0 for w in _as_list(class_weights or []))),
            eval_crop_size=(
                list(eval_crop_size),
                "[height, width], each >= 1",
                len(eval_crop_size) == 2 and min(eval_crop_size) >= 1,
            ),
        )
        self.save_hyperparameters()
        if isinstance(net, dict):  # the spec saved in a checkpoint's hyperparameters
            net = network_from_spec(net)
        if not isinstance(self.hparams.net, dict):  # plain data in checkpoints, not a pickled callable
            self.hparams.net = network_spec(net)
        try:
            self.net = net(num_classes)
        except ValueError as error:  # the networks check their own options (widths, branches, dropout, ...)
            raise ConfigError(f"model.net: {error}") from None
        if not isinstance(self.net, SegmentationNetwork):
            raise ConfigError(
                f"model.net builds a {type(self.net).__name__}, not a bisenet_pl.models.SegmentationNetwork: "
                "derive the network from it (its docstring says what the module relies on)"
            )
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ConfigError(f"model.class_names has {len(self.class_names)} names for {num_classes} classes")
        if class_weights is not None and len(class_weights) != num_classes:
            raise ConfigError(f"model.class_weights has {len(class_weights)} values for {num_classes} classes")
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.criterion = build_loss(loss, ignore_index, ohem_threshold, ohem_min_kept_fraction, weights)
        self.aux_names, self.aux_weights = self._prune_aux_heads(aux_weights)
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
        metrics = MetricCollection(
            {
                "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
                "IoU": MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index),
                "pixel_accuracy": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
                "confusion_matrix": MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index),
            }
        )
        self.val_metrics = metrics.clone(prefix="val/")
        self.dev_metrics = metrics.clone(prefix="dev/")  # a held-out split validated beside val
        self.test_metrics = metrics.clone(prefix="test/")
        #: The last epoch's confusion matrix per stage (rows: target, columns: prediction).
        self.confusion_matrices: dict[str, torch.Tensor] = {}
        self._weights_loaded = False  # setup() runs once per trainer call; load once
        self.weights_info: WeightsInfo | None = None
        self._compiled = False

    @classmethod
    def from_pretrained(cls, source: str | Path, **options) -> SegmentationModule:
        """A module in eval mode, in one call, from released weights (``"bisenetv2_camvid"``), a file
        of ``bisenet-pl export --format weights`` or a checkpoint of ``bisenet-pl fit``: the network,
        the class count and names and the ignored label come from the file; ``options`` are the other
        arguments (``eval_mode="msf"``, ...). Aux heads are not built unless ``aux_weights`` is given.
        """
        info = read_weights_info(source)
        if info.network is None or info.num_classes is None:
            raise ConfigError(
                f"{source} does not say which network it fits (a plain state dict): build "
                "SegmentationModule(net=..., num_classes=..., pretrained=...) instead"
            )
        known = {"ignore_index": info.ignore_index, "class_names": info.class_names}
        options = {"aux_weights": 0.0} | {k: v for k, v in known.items() if v is not None} | options
        module = cls(net=info.network, num_classes=info.num_classes, pretrained=str(source), **options)
        module.load_pretrained(source, classes_from_file=True)
        module._weights_loaded = True
        module.weights_info = info  # its data's normalisation and colours, for save_pretrained
        return module.eval()

    def save_pretrained(self, directory: str | Path, **card) -> Path:
        """Write the network (aux heads dropped) to ``directory`` in the Hugging Face Hub's layout
        (:func:`bisenet_pl.models.hub.save_pretrained`; ``card``: its ``results``, ``dataset`` and
        ``description``), loadable with :meth:`from_pretrained`. The normalisation and colours are
        those of the weights this module was loaded from, else of the trainer's datamodule."""
        info = copy.deepcopy(self.weights_info) if self.weights_info else WeightsInfo()
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None:
            info.mean, info.std = list(datamodule.mean), list(datamodule.std)
            info.palette = [list(colour) for colour in datamodule.palette]
        if info.mean is None or info.std is None:
            raise ConfigError(
                "save_pretrained needs the training data's normalisation: load the module with from_pretrained, or "
                "save it while a trainer with its datamodule is attached"
            )
        info.network, info.num_classes = self.hparams.net, self.num_classes
        info.ignore_index, info.class_names = self.ignore_index, list(self.class_names)
        state = {key: value for key, value in self.net.state_dict().items() if not key.startswith("aux_heads.")}
        return save_pretrained(state, info, directory, **card)

    def _prune_aux_heads(self, aux_weights: float | Sequence[float]) -> tuple[list[str], list[float]]:
        """Match weights to the network's aux heads; drop zero-weight heads entirely."""
        names = list(self.net.aux_heads)
        weights = [float(aux_weights)] * len(names) if isinstance(aux_weights, (int, float)) else list(aux_weights)
        if len(weights) != len(names):
            raise ConfigError(
                f"model.aux_weights has {len(weights)} values for the network's {len(names)} aux heads {names}"
            )
        self.net.remove_aux_heads(name for name, weight in zip(names, weights) if weight == 0)
        kept = [(name, weight) for name, weight in zip(names, weights) if weight != 0]
        return [name for name, _ in kept], [weight for _, weight in kept]

    # Weights.
    def prepare_data(self) -> None:
        # Download remote weights once per node (rank 0) into the torch.hub cache.
        backbone = self.hparams.backbone_weights
        for source in (self.hparams.pretrained, self.net.backbone_weights_url(backbone) if backbone else None):
            if source and "://" in source:
                read_state_dict(source)

    def setup(self, stage: str) -> None:
        crop_size = getattr(self.trainer.datamodule, "crop_size", None) if self._trainer else None
        if stage == "fit" and crop_size:  # the model summary's FLOPs and sizes: one training crop
            self.example_input_array = torch.zeros(1, 3, *crop_size)
        if self._weights_loaded:
            return
        self._weights_loaded = True
        if self.hparams.backbone_weights and stage == "fit" and not self.hparams.pretrained:
            self.net.load_backbone_weights(self.hparams.backbone_weights)
            rank_zero_info(f"Loaded backbone weights from {self.hparams.backbone_weights}")
        if self.hparams.pretrained:
            self.load_pretrained(self.hparams.pretrained)

    def load_pretrained(self, source: str | Path, classes_from_file: bool = False) -> None:
        """Initialise the network from a checkpoint of ours, a state dict, or a CoinCheung .pth
        (see :func:`bisenet_pl.models.weights.load_network_weights`)."""
        for line in load_network_weights(self.net, source, classes_from_file):
            rank_zero_info(line)

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
        :func:`bisenet_pl.inference.probabilities`) and the batch's identifiers (``path``, and
        ``frame`` and ``fps`` for video)."""
        scores = class_scores(self, batch["image"], self.evaluation)
        return {"prediction": scores.argmax(dim=1), "scores": scores} | {
            key: value for key, value in batch.items() if key not in ("image", "mask")
        }

    def _log_epoch_metrics(self, metrics: MetricCollection, stage: str) -> None:
        results = metrics.compute()
        metrics.reset()
        self.confusion_matrices[stage] = results.pop(f"{stage}/confusion_matrix").cpu()
        per_class = results.pop(f"{stage}/IoU")
        scalars = dict(results)
        scalars.update({f"{stage}/IoU/{name}": iou for name, iou in zip(self.class_names, per_class)})
        # Already reduced over processes by torchmetrics: every rank holds the same values.
        self.log_dict(scalars, sync_dist=True, add_dataloader_idx=False)

    def on_validation_epoch_end(self) -> None:
        for split in self.validation_splits():
            self._log_epoch_metrics(self.dev_metrics if split == "dev" else self.val_metrics, split)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics(self.test_metrics, "test")

    # Optimisation.
    def configure_optimizers(self):
        hp = self.hparams
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {(h, d): [] for h in (False, True) for d in (False, True)}
        for name, param in self.net.named_parameters():
            if not param.requires_grad:
                continue
            is_head = self.net.is_head_parameter(name)
            decays = param.ndim > 1  # no decay on BatchNorm parameters and biases
            groups[(is_head, decays)].append(param)
        param_groups = [
            {
                "params": params,
                "lr": hp.lr * (hp.head_lr_multiplier if is_head else 1.0),
                "weight_decay": hp.weight_decay if decays else 0.0,
                "name": f"{'head' if is_head else 'body'}{'' if decays else '_no_decay'}",
            }
            for (is_head, decays), params in groups.items()
            if params
        ]
        if hp.optimizer == "adamw":
            optimizer = torch.optim.AdamW(param_groups, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.SGD(param_groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        total_steps = int(self.trainer.estimated_stepping_batches)
        schedule = WarmupPolyLR(total_steps, hp.warmup_steps, hp.warmup_ratio, hp.poly_power)
        if schedule.warmup_steps < hp.warmup_steps:
            rank_zero_warn(
                f"model.warmup_steps={hp.warmup_steps} is more than {MAX_WARMUP_FRACTION:.0%} of this run's "
                f"{total_steps} "
                f"steps: warming up over {schedule.warmup_steps} steps instead (give model.warmup_steps <= "
                f"{max_warmup_steps(total_steps)} to choose)"
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _as_list(value: float | Sequence[float]) -> list[float]:
    return [value] if isinstance(value, (int, float)) else list(value)
