"""Experiment tracking: a W&B logger with typed options, the resolved config in every logger's run
folder, and pictures sent to whichever logger is on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

from bisenet_pl.data.io import write_image

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
