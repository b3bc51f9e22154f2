"""Experiment tracking and reporting: a W&B logger with typed options, the resolved config in every
run, validation pictures (sample predictions, confusion matrix) for whichever logger is on, training
time, and what a run prints."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, RichProgressBar
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from bisenet_pl.compat import TRAIN_DESCRIPTION
from bisenet_pl.data.io import write_image
from bisenet_pl.inference import main_logits
from bisenet_pl.visualize import confusion_matrix_figure, denormalize, figure_to_array, palette_for, sample_panel

#: W&B summaries of a run: the best value, not the last, is what a sweep optimises.
SUMMARY_METRICS: dict[str, str] = {
    f"{split}/{name}": summary
    for split in ("val", "dev")
    for name, summary in (("mIoU", "max"), ("pixel_accuracy", "max"), ("loss", "min"))
}


class WandbLogger(LightningWandbLogger):
    """Lightning's WandbLogger with W&B's run options as named, typed arguments, so that YAML and
    the command line can set them (``--trainer.logger.init_args.group=ablation``), and with
    ``val/mIoU``'s run summary being its maximum.

    Offline (``offline=true`` or ``WANDB_MODE=offline``) it never touches the network; sync
    later with ``wandb sync DIR``.

    Args:
        project: W&B project.
        entity: W&B user or team (default: yours).
        group: runs to show together (e.g. one ablation table).
        tags: labels to filter runs by.
        job_type: e.g. ``train`` or ``eval``.
        notes: a longer description of the run.
        name: display name of the run.
        save_dir: where the ``wandb`` folder goes (and the checkpoints, under ``project/run id``).
        offline: log to disk only.
        id: a run id, to resume a run.
        log_model: upload checkpoints as W&B artifacts (``true``: at the end, ``all``: each one).
        summary_metrics: metric -> ``max``/``min``/``last``: which value a run's summary holds.
    """

    def __init__(
        self,
        project: str = "bisenet-pl",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        job_type: str | None = None,
        notes: str | None = None,
        name: str | None = None,
        save_dir: str = "outputs",
        offline: bool = False,
        id: str | None = None,
        log_model: bool | str = False,
        summary_metrics: dict[str, str] | None = None,
    ) -> None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)  # W&B falls back to a temp dir otherwise
        super().__init__(
            name=name,
            save_dir=save_dir,
            offline=offline,
            id=id,
            project=project,
            log_model=log_model,
            entity=entity,
            group=group,
            tags=tags,
            job_type=job_type,
            notes=notes,
            resume="allow" if id else None,
        )
        self.summary_metrics = dict(SUMMARY_METRICS if summary_metrics is None else summary_metrics)
        self._summaries_defined = False

    @property
    def experiment(self):
        run = super().experiment
        if not self._summaries_defined and hasattr(run, "define_metric"):
            for metric, summary in self.summary_metrics.items():
                run.define_metric(metric, step_metric="trainer/global_step", summary=summary)
            self._summaries_defined = True
        return run


#: The config's file name in a W&B run's files (W&B writes its own ``config.yaml`` there).
WANDB_CONFIG_FILENAME = "cli_config.yaml"


class SaveConfigToLoggers(SaveConfigCallback):
    """The fully resolved config as ``config.yaml`` in each logger's own run folder (W&B: as
    ``cli_config.yaml`` in the run's files), and in W&B's run config.

    Lightning's default writes it to ``trainer.log_dir``, which WandbLogger does not version: a
    second run in the same place would fail or overwrite the first run's file. A W&B run's own
    files folder and a CSV/TensorBoard version folder belong to one run only.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False)
        for logger in trainer.loggers:
            if isinstance(logger, LightningWandbLogger):
                run = logger.experiment
                run.config.update(yaml.safe_load(text), allow_val_change=True)
                path = Path(run.dir) / WANDB_CONFIG_FILENAME
            elif logger.log_dir is not None:
                path = Path(logger.log_dir) / self.config_filename
            else:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


def log_images(
    loggers: Sequence[Logger], key: str, images: Sequence[np.ndarray], step: int, **wandb_options: list
) -> list[Path]:
    """Send RGB images to loggers: W&B images (with ``wandb_options`` such as ``masks``),
    TensorBoard images, or PNG files under any other logger's ``log_dir/images``. Returns the files written."""
    written = []
    for logger in loggers:
        if isinstance(logger, LightningWandbLogger):
            logger.log_image(key=key, images=list(images), step=step, **wandb_options)
        elif isinstance(logger, TensorBoardLogger):
            for index, image in enumerate(images):
                logger.experiment.add_image(f"{key}/{index}", image, step, dataformats="HWC")
        elif isinstance(logger, Logger) and logger.log_dir is not None:
            folder = Path(logger.log_dir) / "images" / key.replace("/", "_")
            for index, image in enumerate(images):
                path = folder / f"step_{step:06d}_{index}.png"
                write_image(path, image)
                written.append(path)
    return written


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
