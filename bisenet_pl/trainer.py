"""Lightning's Trainer with one more precision, ``auto``, and its options checked before anything runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities import rank_zero_info

from bisenet_pl.allocator import keep_freed_memory
from bisenet_pl.compat import LIGHTNING_INFO_LOGGER, PRECISION_INPUT
from bisenet_pl.errors import check_options
from bisenet_pl.files import atomic_write


class _NoAdvertisement(logging.Filter):
    """Lightning 2.6 logs a tip to install its hosted logger each time a Trainer is built (every validation
    of a sweep, every row of the benchmark): not about the run, so left out of its output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "try installing [litlogger]" not in record.getMessage()


logging.getLogger(LIGHTNING_INFO_LOGGER).addFilter(_NoAdvertisement())


def auto_precision(accelerator: str = "auto") -> tuple[str, str]:
    """The precision ``auto`` picks for ``accelerator`` when there is no step to time, and why: on a
    GPU its mixed precision; on a CPU float32, because what is faster there must be measured (the
    command line does, see :mod:`bisenet_pl.precision`)."""
    on_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_cuda:
        if torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{torch.cuda.get_device_name()} computes bf16"
        return "16-mixed", f"{torch.cuda.get_device_name()} computes fp16, not bf16"
    return "32-true", (
        "on a CPU only a measurement tells whether bf16 is faster, and this Trainer has no network to time "
        "(bisenet-pl's command line measures; or pass bisenet_pl.precision.fastest_cpu_precision(...).precision)"
    )


def _steps_or_fraction(value: float, zero: bool) -> bool:
    """An int count (>= 0 or >= 1) or a float fraction (in [0, 1] or (0, 1]), as Lightning reads them."""
    if isinstance(value, float):
        return (0 <= value if zero else 0 < value) and value <= 1
    return value >= (0 if zero else 1)


#: Trainer options Lightning accepts out of range (or fails on later, with a ZeroDivisionError or
#: a traceback from deep inside the loop): what each must be.
TRAINER_OPTION_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "max_steps": ("-1 (no limit) or >= 0", lambda v: v >= -1),
    "min_steps": (">= 0", lambda v: v >= 0),
    "max_epochs": ("-1 (no limit) or >= 0", lambda v: v >= -1),
    "min_epochs": (">= 0", lambda v: v >= 0),
    "val_check_interval": (
        "a share of an epoch in (0, 1] or a number of steps >= 1",
        lambda v: _steps_or_fraction(v, zero=False),
    ),
    "check_val_every_n_epoch": (">= 1, or null to validate every val_check_interval steps", lambda v: v >= 1),
    "accumulate_grad_batches": (">= 1", lambda v: v >= 1),
    "gradient_clip_val": (">= 0", lambda v: v >= 0),
    "num_sanity_val_steps": ("-1 (all) or >= 0", lambda v: v >= -1),
    "log_every_n_steps": (">= 0", lambda v: v >= 0),
    **{
        f"limit_{stage}_batches": (
            "a share in [0, 1] or a number of batches >= 0",
            lambda v: _steps_or_fraction(v, zero=True),
        )
        for stage in ("train", "val", "test", "predict")
    },
}


def check_trainer_options(options: dict) -> None:
    """A one-line :class:`ConfigError` naming the first trainer option out of its range."""
    checks = {}
    for name, (expected, holds) in TRAINER_OPTION_RANGES.items():
        value = options.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # a time string etc.: Lightning's to read
            checks[name] = (value, expected, holds(value))
    check_options("trainer", **checks)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writing, with local files written to a temporary file beside the
    checkpoint and renamed into place: Lightning's own stages them in the system's temporary folder
    and copies them across, which on a full disk left a truncated ``last.ckpt`` at the final path."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own way
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_write(Path(path)) as partial:
            torch.save(checkpoint, partial)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` steps, and at the end of training whatever the step:
    Lightning's own writes it at the end only when it has not written it before, so a run of 1188
    steps saved every 500 left a ``last.ckpt`` of step 1000.

    A run that ends at ``max_steps`` is saved after its last step, as the periodic saves are, not at
    the end of training: by then Lightning has closed the epoch, and a longer run resumed from that
    file started a new epoch instead of continuing this one (other weights than a run never stopped)."""

    def __init__(self, *args, every_n_train_steps: int | None = None, **kwargs) -> None:
        super().__init__(*args, every_n_train_steps=every_n_train_steps, **kwargs)
        self.every_steps = every_n_train_steps
        self._saved_step: int | None = None

    def _save_last_between_saves(self, trainer: L.Trainer) -> None:
        between_saves = self.every_steps and trainer.global_step % self.every_steps != 0
        if self.save_last and between_saves and self.dirpath and not trainer.fast_dev_run:
            if self._saved_step != trainer.global_step:
                last = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
                trainer.save_checkpoint(last, weights_only=self.save_weights_only)
                self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
            self._save_last_between_saves(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._saved_step == trainer.global_step:
            return  # saved after the last step; Lightning's save here would write last-v1.ckpt beside it
        super().on_train_end(trainer, pl_module)
        self._save_last_between_saves(trainer)  # stopped otherwise: epochs, time, early stopping


def needs_logger(callback: Callback) -> bool:
    """Callbacks that only feed loggers: Lightning's LearningRateMonitor, and ours that say so."""
    return isinstance(callback, LearningRateMonitor) or getattr(callback, "needs_logger", False)


def without_switched_off(callbacks: Callback | list[Callback], options: dict) -> list[Callback]:
    """``callbacks`` without those for what ``options`` switch off: checkpoints
    (``enable_checkpointing=False``), the progress bar, logging (``logger=False``). The command line
    adds them to every run; Lightning would refuse a ModelCheckpoint with checkpointing off."""
    callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
    off = [
        (options.get("enable_checkpointing") is False, lambda c: isinstance(c, ModelCheckpoint)),
        (options.get("enable_progress_bar") is False, lambda c: isinstance(c, ProgressBar)),
        (options.get("logger") is False, needs_logger),
    ]
    return [c for c in callbacks if not any(switched and matches(c) for switched, matches in off)]


class Trainer(L.Trainer):
    """``lightning.Trainer``; ``precision="auto"`` is bf16-mixed or 16-mixed on a GPU and float32 on a
    CPU, said in a line (the command line resolves ``auto`` on a CPU by timing the run's own step
    before it builds the Trainer). Numeric options are checked against their meaning before anything runs,
    and checkpoints are written atomically next to their final path (:class:`AtomicCheckpointIO`). Freed
    memory is kept for the next step (:func:`bisenet_pl.allocator.keep_freed_memory`)."""

    def __init__(self, *args, precision: PRECISION_INPUT | Literal["auto"] | None = None, **kwargs) -> None:
        check_trainer_options(kwargs)
        keep_freed_memory()
        if kwargs.get("callbacks"):
            kwargs["callbacks"] = without_switched_off(kwargs["callbacks"], kwargs)
        plugins = kwargs.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if precision == "auto":
            accelerator = kwargs.get("accelerator", "auto")
            precision, reason = auto_precision(accelerator if isinstance(accelerator, str) else "auto")
            rank_zero_info(f"trainer.precision=auto: {precision}, because {reason}")
        super().__init__(*args, precision=precision, **kwargs)
