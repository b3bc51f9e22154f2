"""The private Lightning and torch names of bisenet_pl/compat.py, each checked against the installed
versions: an upgrade that renames one fails here, by name."""

import importlib
import importlib.util
import inspect
import logging
import typing
import warnings

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, RichProgressBar
from lightning.pytorch.cli import LightningCLI

from bisenet_pl import compat
from bisenet_pl.callbacks import ProgressBar
from bisenet_pl.cli.lightning_cli import BiSeNetCLI
from bisenet_pl.trainer import Trainer


def test_the_trainers_precision_values_are_a_literal_of_the_known_names():
    values = set()
    for part in typing.get_args(compat.PRECISION_INPUT):
        values |= set(typing.get_args(part))
    assert {"32-true", "bf16-mixed", "16-mixed", "64-true"} <= values


def test_the_onnx_exporters_registration_logger_is_a_module_of_torch():
    assert importlib.util.find_spec(compat.ONNX_REGISTRATION_LOGGER) is not None


def test_rich_progress_bar_still_builds_its_training_text_in_the_named_method():
    method = getattr(RichProgressBar, compat.TRAIN_DESCRIPTION)
    assert list(inspect.signature(method).parameters) == ["self", "current_epoch"]
    # and calls it itself when it makes the training bar, so ProgressBar's version is the one shown
    assert f"self.{compat.TRAIN_DESCRIPTION}(" in inspect.getsource(RichProgressBar.on_train_epoch_start)
    assert getattr(ProgressBar, compat.TRAIN_DESCRIPTION) is ProgressBar.train_description


def test_the_fit_loop_counts_the_batches_of_an_epoch(tmp_path):
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    assert compat.batches_done(trainer)() == 0


def test_the_cli_keeps_a_parser_per_subcommand():
    # LightningCLI fills the dict when it adds its subcommands; subcommand_parser reads it.
    assert "self._subcommand_parsers[subcommand] = subcommand_parser" in inspect.getsource(LightningCLI)


def test_the_cli_still_lays_checkpoint_hyperparameters_in_the_named_method():
    # LightningCLI calls it after parsing; the CLI's replacement reads older checkpoints' option names.
    assert f"self.{compat.CHECKPOINT_HYPERPARAMETERS}()" in inspect.getsource(LightningCLI.__init__)
    assert getattr(BiSeNetCLI, compat.CHECKPOINT_HYPERPARAMETERS) is BiSeNetCLI.parse_checkpoint_hyperparameters


def test_a_weight_averaging_callback_keeps_its_average_as_a_copy_of_the_module(tmp_path):
    module = L.LightningModule()
    module.layer = torch.nn.Linear(2, 2)
    callback = EMAWeightAveraging(decay=0.5)
    assert compat.averaged_module(callback) is None  # before fit
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    callback.setup(trainer, module, "fit")
    average = compat.averaged_module(callback)
    assert isinstance(average, L.LightningModule) and average is not module
    assert torch.equal(average.layer.weight, module.layer.weight)


def test_lightnings_tip_to_install_its_logger_is_left_out_and_our_lines_are_not(caplog):
    with caplog.at_level(logging.INFO, logger=compat.LIGHTNING_INFO_LOGGER):
        Trainer(accelerator="cpu", precision="auto", logger=False, enable_progress_bar=False)
    assert "trainer.precision=auto: 32-true" in caplog.text  # a line of ours, through the same logger
    assert "litlogger" not in caplog.text


def test_lightnings_use_of_torchs_deprecated_leafspec_is_quiet_on_the_command_line():
    """Lightning 2.6 builds torch.utils._pytree.LeafSpec, which torch 2.13 deprecates: a FutureWarning from
    Lightning's file at every validation and prediction, which no user can act on. The command line hides it;
    when this first assertion fails, Lightning no longer warns and the filter can go."""
    flatten = importlib.import_module(compat.LIGHTNING_PYTREE)._tree_flatten
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flatten({"loss": torch.zeros(())})
        assert any("LeafSpec" in str(warning.message) for warning in caught)
        caught.clear()
        compat.quiet_dependency_warnings()
        flatten({"loss": torch.zeros(())})
        assert not caught


def test_the_checkpoint_callbacks_module_is_where_the_changed_dirpath_warning_comes_from():
    source = inspect.getsource(importlib.import_module(compat.CHECKPOINT_CALLBACK_MODULE))
    assert "The dirpath has changed from" in source
