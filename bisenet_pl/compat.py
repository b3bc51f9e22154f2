"""Every private Lightning or torch name this project uses, in one place; ``tests/test_compat.py``
checks each, so an upgrade that renames one fails there, by name, instead of somewhere downstream.
Checked against lightning 2.6.6 and torch 2.13.0, the versions pyproject.toml allows and the tests run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import lightning as L
from lightning.fabric.connector import _PRECISION_INPUT as PRECISION_INPUT  # the Trainer's precision values
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn

__all__ = [
    "CHECKPOINT_CALLBACK_MODULE",
    "CHECKPOINT_HYPERPARAMETERS",
    "LIGHTNING_INFO_LOGGER",
    "ONNX_REGISTRATION_LOGGER",
    "PRECISION_INPUT",
    "TRAIN_DESCRIPTION",
    "averaged_module",
    "batches_done",
    "quiet_dependency_warnings",
    "subcommand_parser",
]

#: The logger of Lightning's rank_zero_info lines (its tips among them, filtered in bisenet_pl.trainer).
LIGHTNING_INFO_LOGGER = "lightning.pytorch.utilities.rank_zero"
#: The logger of torch's ONNX exporter that reports each operator it cannot register (silenced in export).
ONNX_REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"
#: LightningCLI's method that lays a ``--ckpt_path``'s saved hyperparameters over the parsed config
#: (the CLI replaces it, to read an older checkpoint's options under their new names).
CHECKPOINT_HYPERPARAMETERS = "_parse_ckpt_path"
#: RichProgressBar's method for the training bar's text: it has no public hook for it.
TRAIN_DESCRIPTION = "_get_train_description"
#: The module of ModelCheckpoint, which warns when a checkpoint it restores was written to another folder
#: (test, validate and predict hide that: they write no checkpoint).
CHECKPOINT_CALLBACK_MODULE = "lightning.pytorch.callbacks.model_checkpoint"
#: Where Lightning 2.6 builds torch's deprecated LeafSpec (torch 2.13 warns at each validation and prediction).
LIGHTNING_PYTREE = "lightning.pytorch.utilities._pytree"


def quiet_dependency_warnings() -> None:
    """Hide warnings that one dependency raises about another's use of it and that nothing a user does can
    change (the command line calls this; a warning filter set at import does not survive pytest's collection)."""
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
        module=LIGHTNING_PYTREE,
    )  # fmt: skip


def averaged_module(callback: WeightAveraging) -> nn.Module | None:
    """The LightningModule holding a weight-averaging callback's average (e.g. EMAWeightAveraging's), or None
    outside fit, before its setup: the callback offers no public way to reach it."""
    average = callback._average_model
    return None if average is None else average.module


def batches_done(trainer: L.Trainer) -> Callable[[], int]:
    """How many batches of the current epoch ``trainer``'s fit loop has processed, read when called
    (the loader runs ahead by its prefetching; Lightning's loop progress is the count to resume from)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress.current
    return lambda: progress.processed


def subcommand_parser(cli, subcommand: str):
    """The jsonargparse parser a LightningCLI built for ``subcommand``."""
    return cli._subcommand_parsers[subcommand]
