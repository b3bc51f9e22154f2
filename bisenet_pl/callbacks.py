"""What a run reports besides its metrics: validation pictures (sample predictions, the confusion
matrix) for whichever logger is on, training time, what it prints, and its progress bar."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from bisenet_pl.compat import TRAIN_DESCRIPTION
from bisenet_pl.evaluation import main_logits
from bisenet_pl.loggers import log_images
from bisenet_pl.visualize import confusion_matrix_figure, denormalize, figure_to_array, palette_for, sample_panel


class ValidationImages(Callback):
    """After each validation: predictions on a fixed set of validation images and the confusion
    matrix, as pictures for every logger (W&B: images with interactive ground-truth and predicted
    masks; otherwise image | ground truth | prediction | error panels).

    Args:
        num_samples: validation images shown, evenly spaced over the set (0: none).
        confusion_matrix: also show the row-normalised confusion matrix.
    """

    needs_logger = True  # Trainer(logger=False) leaves it out

    def __init__(self, num_samples: int = 4, confusion_matrix: bool = True) -> None:
        self.num_samples = num_samples
        self.confusion_matrix = confusion_matrix

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.loggers or not trainer.is_global_zero:
            return
        step = trainer.global_step
        matrix = getattr(pl_module, "confusion_matrices", {}).get("val")
        if self.confusion_matrix and matrix is not None:
            figure = confusion_matrix_figure(matrix, pl_module.class_names, f"Validation confusion matrix, step {step}")
            log_images(trainer.loggers, "val/confusion_matrix", [figure_to_array(figure)], step)
        if self.num_samples > 0:
            self._log_samples(trainer, pl_module, step)

    @torch.no_grad()
    def _log_samples(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        loader = trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) else loader  # val; a dev split comes second
        dataset = getattr(loader, "dataset", None)
        if dataset is None or len(dataset) == 0:
            return
        datamodule = trainer.datamodule
        palette = palette_for(datamodule, pl_module.num_classes)
        mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        ignore_index = pl_module.ignore_index
        labels = dict(enumerate(pl_module.class_names)) | {ignore_index: "ignore"}
        indices = np.linspace(0, len(dataset) - 1, min(self.num_samples, len(dataset))).round().astype(int)
        images, panels, masks, captions = [], [], [], []
        was_training = pl_module.training
        pl_module.eval()
        try:
            for index in dict.fromkeys(indices.tolist()):
                item = dataset[index]
                with trainer.precision_plugin.forward_context():
                    logits = main_logits(pl_module, item["image"][None].to(pl_module.device))
                prediction = logits[0].argmax(0).byte().cpu().numpy()
                target = item["mask"].cpu().numpy().astype(np.uint8)
                image = denormalize(item["image"], mean, std)
                images.append(image)
                panels.append(sample_panel(image, target, prediction, palette, ignore_index))
                masks.append(
                    {
                        "ground_truth": {"mask_data": target, "class_labels": labels},
                        "prediction": {"mask_data": prediction, "class_labels": labels},
                    }
                )
                captions.append(Path(item["path"]).name)
        finally:
            pl_module.train(was_training)
        # W&B shows each image with toggleable masks; other loggers get the side-by-side panels.
        wandb = [logger for logger in trainer.loggers if isinstance(logger, LightningWandbLogger)]
        others = [logger for logger in trainer.loggers if logger not in wandb]
        log_images(wandb, "val/samples", images, step, masks=masks, caption=captions)
        log_images(others, "val/samples", panels, step)


class TrainingTime(Callback):
    """Logs ``time/minutes``, the wall-clock minutes of training so far (validation included), at
    every validation, so that learning curves can be drawn against time as well as steps. The
    count is saved in checkpoints and continues when a run resumes."""

    needs_logger = True  # Trainer(logger=False) leaves it out

    def __init__(self) -> None:
        self.minutes_before = 0.0  # of earlier runs this one resumes
        self._start: float | None = None

    def minutes(self) -> float:
        if self._start is None:  # not started in this process (yet)
            return self.minutes_before
        return self.minutes_before + (time.monotonic() - self._start) / 60

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and self._start is not None:
            pl_module.log("time/minutes", self.minutes(), sync_dist=False, rank_zero_only=True)

    def state_dict(self) -> dict:
        return {"minutes": self.minutes()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.minutes_before = float(state_dict.get("minutes", 0.0))


class ConsoleReport(Callback):
    """What a run prints besides the progress bar, on the first process: a line per validation
    during fit, and the per-class IoU table after test."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.is_global_zero:
            metrics = trainer.callback_metrics
            splits = [split for split in ("val", "dev") if f"{split}/mIoU" in metrics]
            scores = [
                f"mIoU {100 * float(metrics[f'{split}/mIoU']):.2f}, pixel accuracy "
                f"{100 * float(metrics[f'{split}/pixel_accuracy']):.2f}" + (f" on {split}" if len(splits) > 1 else "")
                for split in splits
            ]
            print(f"Validation at step {trainer.global_step}: {'; '.join(scores)}", flush=True)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            results = {key: float(value) for key, value in trainer.callback_metrics.items()}
            print(format_iou_table(pl_module.class_names, results, "test"))


def format_iou_table(class_names: Sequence[str], results: dict[str, float], stage: str) -> str:
    """A per-class IoU table with mIoU and pixel accuracy, for the console."""
    width = max(len(name) for name in [*class_names, "pixel accuracy"]) + 2
    lines = [f"{'class':<{width}}{'IoU':>8}", "-" * (width + 8)]
    lines += [f"{name:<{width}}{100 * results[f'{stage}/IoU/{name}']:>8.2f}" for name in class_names]
    lines += ["-" * (width + 8), f"{'mIoU':<{width}}{100 * results[f'{stage}/mIoU']:>8.2f}"]
    lines.append(f"{'pixel accuracy':<{width}}{100 * results[f'{stage}/pixel_accuracy']:>8.2f}")
    return "\n".join(lines)


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting what bounds the run: a run bounded by
    ``max_steps`` reads ``Epoch 3 · step 138/400`` instead of ``Epoch 3/-2``."""

    def _step_bounded(self) -> bool:
        return self.trainer.max_epochs in (None, -1) and self.trainer.max_steps > 0

    def train_description(self, current_epoch: int) -> str:
        """The training bar's text (RichProgressBar asks for it through compat.TRAIN_DESCRIPTION)."""
        if self._step_bounded():
            return f"Epoch {current_epoch} · step {self.trainer.global_step}/{self.trainer.max_steps}"
        return getattr(super(), TRAIN_DESCRIPTION)(current_epoch)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._step_bounded() and self.progress is not None and self.train_progress_bar_id is not None:
            self.progress.update(self.train_progress_bar_id, description=self.train_description(trainer.current_epoch))


# RichProgressBar builds the training bar's text in a private method, with no public hook.
setattr(ProgressBar, TRAIN_DESCRIPTION, ProgressBar.train_description)
