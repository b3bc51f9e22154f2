"""The training side of ``bisenet-pl``: Lightning's fit/validate/test/predict through a LightningCLI with
this project's callbacks, ``precision=auto``, ``--train_minutes`` and ``--ckpt_path last``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Optional

import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info

from bisenet_pl.batchnorm import BatchNormRecalibration
from bisenet_pl.callbacks import ConsoleReport, ProgressBar, TrainingTime, ValidationImages
from bisenet_pl.compat import CHECKPOINT_CALLBACK_MODULE, CHECKPOINT_HYPERPARAMETERS, subcommand_parser
from bisenet_pl.errors import ConfigError
from bisenet_pl.files import check_outside_source, check_writable, find_last_checkpoint
from bisenet_pl.loggers import SaveConfigToLoggers
from bisenet_pl.models.weights import check_lightning_checkpoint
from bisenet_pl.module import SegmentationModule
from bisenet_pl.module_options import (
    read_checkpoint_lazily,
    restore_user_model_options,
    upgrade_command_line,
    upgrade_options,
)
from bisenet_pl.precision import PrecisionChoice, fastest_cpu_precision
from bisenet_pl.time_budget import (
    TIME_RESERVE,
    VALIDATIONS,
    evaluation_size,
    steps_within,
    validation_choice,
    validation_cost,
)
from bisenet_pl.trainer import LastCheckpoint, Trainer, auto_precision
from bisenet_pl.writer import SegmentationWriter

#: Precisions a GPU recipe may name that a CPU cannot compute (no fp16 autocast there): Lightning would take
#: bf16-mixed for them without measuring, ten times slower than float32 on a CPU without native bf16.
GPU_ONLY_PRECISIONS = ("16-mixed", "16")

TOOLS_HELP = """\
Other commands:
  bisenet-pl stats --config CONFIG [--split train]   dataset statistics (sizes, class shares, mean/std, weights)
  bisenet-pl convert REFERENCE.pth OUTPUT.pth         convert a CoinCheung/BiSeNet checkpoint to this layout
  bisenet-pl export --ckpt_path CKPT | --model.pretrained WEIGHTS [--format onnx|openvino|torchscript|weights|hub]
                    [--precision fp32|bf16|int8] [--input float|uint8_nhwc|uint8_nchw] [--labels int32|int64]
                                                      a deployable network (BN folded, aux heads dropped),
                                                      or float16 weights for --model.pretrained
  bisenet-pl sweep sweeps/NAME.yaml [--seeds N] [--count N] [-- FIT ARGS]
                                                      a W&B sweep file's runs, here, in turn (no server needed)
  bisenet-pl demo [--model.pretrained WEIGHTS | --ckpt_path CKPT] [--port 7860]
                                                      a page on 127.0.0.1 that segments uploaded images and videos
"""


class BiSeNetCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        # The dataset decides these; the model never has them typed a second time.
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
        # Callbacks every run has, configurable as --checkpoint.*, --last_checkpoint.*, --lr_monitor.*.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mIoU",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-{epoch:03d}-{step:06d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        # last.ckpt every N steps, for --ckpt_path last after a crash (Lightning writes it atomically).
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "last_checkpoint.every_n_train_steps": 500,
                "last_checkpoint.save_last": True,
                "last_checkpoint.save_top_k": 0,
                "last_checkpoint.monitor": None,
            }
        )
        # BatchNorm statistics of full-size training images before each validation and checkpoint
        # (--bn_recalibration.images): what is logged is what the checkpoint scores.
        parser.add_lightning_class_args(BatchNormRecalibration, "bn_recalibration")
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.add_argument(
            "--train_minutes", type=Optional[float], default=None,
            help="train for about this many minutes: max_steps from a measured training step, 3 validations",
        )  # fmt: skip
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
        # Every recipe validates every val_check_interval steps, whatever the epoch length.
        parser.set_defaults({"trainer.check_val_every_n_epoch": None})
        parser.add_lightning_class_args(ProgressBar, "progress_bar")
        # Sample predictions and the confusion matrix for whichever logger is on (--val_images.*).
        parser.add_lightning_class_args(ValidationImages, "val_images")
        # Minutes of training at each validation, for curves against time (time/minutes).
        parser.add_lightning_class_args(TrainingTime, "training_time")
        # A line per validation during fit, the per-class IoU table after test.
        parser.add_lightning_class_args(ConsoleReport, "console_report")
        # What predict writes (--prediction_writer.*): labels, colour masks, overlays, probabilities.
        parser.add_lightning_class_args(SegmentationWriter, "prediction_writer")

    def parse_arguments(self, parser, args) -> None:
        typed = sys.argv[1:] if args is None else args if isinstance(args, list) else []
        # The options typed on the command line (not those of config files), for --train_minutes.
        self._typed_options = {arg.split("=", 1)[0] for arg in typed if isinstance(arg, str) and arg.startswith("--")}
        if isinstance(args, dict | Namespace):
            super().parse_arguments(parser, args)
        else:  # what Lightning does with a list, the module's former flat options moved into their groups
            self.config = parser.parse_args(upgrade_command_line(typed))
        subcommand = self.config.get("subcommand")
        checkpoint = self.config[subcommand].get("ckpt_path") if subcommand else None
        if checkpoint and Path(checkpoint).is_file():  # before Lightning unpickles it with a traceback
            check_lightning_checkpoint(checkpoint)
        # What the user set (config files and command line), before Lightning reads --ckpt_path.
        self._model_as_parsed = (subcommand, self.config[subcommand].model.clone()) if subcommand else None

    def parse_checkpoint_hyperparameters(self) -> None:
        """Lay a ``--ckpt_path``'s saved hyperparameters over the parsed config, as Lightning does, with the
        module's former flat options of an older checkpoint moved into their groups."""
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (path and Path(path).is_file()):
            return
        hparams = read_checkpoint_lazily(path).get("hyper_parameters") or {}
        hparams.pop("_instantiator", None)
        if hparams:
            hparams = upgrade_options(hparams, path)
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        if self._model_as_parsed is not None:  # a subcommand (run=False parses no subcommand)
            subcommand, typed = self._model_as_parsed
            restore_user_model_options(typed, self.config[subcommand].model, subcommand_parser(self, subcommand))

    def _before_subcommand(self) -> None:
        # Before the trainer creates log folders: an unwritable output leaves nothing behind (bad data was
        # refused earlier still, in instantiate_trainer).
        check_writable(self.trainer.default_root_dir, "trainer.default_root_dir")
        for logger in self.trainer.loggers:
            if logger.save_dir:
                check_writable(logger.save_dir, f"the {type(logger).__name__}'s save_dir")
        for callback in self.trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath and self.subcommand == "fit":
                check_writable(callback.dirpath, "the checkpoint dirpath")
            if isinstance(callback, SegmentationWriter) and callback.output_dir and self.subcommand == "predict":
                check_writable(callback.output_dir, "prediction_writer.output_dir")
                check_outside_source(Path(callback.output_dir), getattr(self.datamodule, "predict_source", None))

        if self.subcommand != "fit":  # its checkpoint callback writes nothing: where fit's wrote is no concern
            warnings.filterwarnings("ignore", message="The dirpath has changed from", module=CHECKPOINT_CALLBACK_MODULE)

        # The subcommand's arguments are read from config_init after this hook.
        arguments = self.config_init[self.subcommand]
        if self.subcommand == "predict" and arguments.get("return_predictions") is None:
            arguments["return_predictions"] = False  # the writer has written them; a video would fill memory
        if arguments.get("ckpt_path") == "last":
            roots = [self.trainer.default_root_dir] + [
                logger.save_dir for logger in self.trainer.loggers if logger.save_dir
            ]
            arguments["ckpt_path"] = str(find_last_checkpoint([Path(root) for root in roots]))

    before_fit = before_validate = before_test = before_predict = _before_subcommand

    def instantiate_trainer(self, **kwargs):
        # precision=auto and --train_minutes resolved here, as Trainer arguments that override the
        # config's (switched-off callbacks are left out by the Trainer itself: without_switched_off).
        if self.subcommand:  # bad data is said before precision=auto measures for seconds or anything is written
            self.datamodule.check_data(self.subcommand)
        subcommand_config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = {**subcommand_config.get("trainer", {}), **kwargs}
        minutes = subcommand_config.get("train_minutes")
        if minutes is not None and minutes <= 0:
            raise ConfigError(f"--train_minutes must be > 0; got {minutes}")
        if config.get("logger") in (None, True):  # a CSV log in the run's folder unless a config names loggers
            kwargs["logger"] = CSVLogger(save_dir=config.get("default_root_dir") or os.getcwd())
        precision, accelerator = config.get("precision"), config.get("accelerator", "auto")
        if precision == "auto":
            kwargs["precision"] = self.fastest_precision(accelerator)
        elif str(precision) in GPU_ONLY_PRECISIONS and self._cpu_training(accelerator):
            setting = f"trainer.precision={precision}, which a CPU does not compute (fp16 autocast), measured like auto"
            kwargs["precision"] = self.fastest_precision(accelerator, setting)
        if minutes is not None and self.subcommand in (None, "fit"):
            typed = self._typed_options
            if "--trainer.max_steps" in typed:
                raise ConfigError(
                    "--train_minutes sets trainer.max_steps from the measured step, and --trainer.max_steps was given "
                    "too: give one of them"
                )
            recalibration = getattr(subcommand_config.get("bn_recalibration"), "images", 0)
            kwargs |= self.schedule_for_minutes(
                minutes, {**config, **kwargs}, "--trainer.val_check_interval" in typed, recalibration
            )
        return super().instantiate_trainer(**kwargs)

    def _cpu_training(self, accelerator: object) -> bool:
        return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())

    def _probe_shape(self) -> tuple[int, tuple[int, int], bool]:
        """Batch, size and kind of the step this run repeats: a training step of a crop when fitting, else a
        forward pass at the size of the first image the command evaluates (the crop size for other sources)."""
        data, train = self.datamodule, self.subcommand in (None, "fit")  # None: built with run=False, to fit
        if train:
            return max(2, data.batch_size), tuple(data.crop_size), train
        splits = data.stage_splits(self.subcommand) if hasattr(data, "stage_splits") else []
        return data.val_batch_size, evaluation_size(data, splits), train

    def fastest_precision(self, accelerator: object, setting: str = "trainer.precision=auto") -> str:
        """``trainer.precision=auto``: on a CPU, the precision this run's own step measures fastest
        in (see :mod:`bisenet_pl.precision`); on a GPU, bf16-mixed where it computes bf16, else 16-mixed.
        ``setting`` begins the line that says so."""
        if not self._cpu_training(accelerator):
            precision, reason = auto_precision(accelerator if isinstance(accelerator, str) else "auto")
            rank_zero_info(f"{setting}: {precision}, because {reason}")
            return precision
        batch, size, train = self._probe_shape()
        choice = replace(fastest_cpu_precision(self.model, batch, size, train=train), setting=setting)
        rank_zero_info(choice.describe())
        self.model.use_measured_memory_format(choice.channels_last, self._validation_format(choice, train))
        return choice.precision

    def _validation_format(self, training: PrecisionChoice, train: bool) -> bool | None:
        """A fit's validations' memory format where ``model.channels_last=auto``: measured apart from the
        training step's (a forward pass at the images' size), said in a line when it differs; else None."""
        data = self.datamodule
        if not (train and self.model.hparams.channels_last == "auto" and hasattr(data, "val_splits")):
            return None
        choice = validation_choice(self.model, data, training.precision)
        if choice.channels_last != training.channels_last:
            rank_zero_info(replace(choice, setting="model.channels_last=auto, validating").describe())
        return choice.channels_last

    def schedule_for_minutes(
        self, minutes: float, trainer_config: dict, interval_typed: bool = False, recalibration_images: int = 0
    ) -> dict:
        """``--train_minutes``: ``max_steps`` from the measured times of a training step and a validation (see
        :mod:`bisenet_pl.time_budget`), validated at thirds unless ``--trainer.val_check_interval`` was typed."""
        if not self._cpu_training(trainer_config.get("accelerator", "auto")):
            raise ConfigError("--train_minutes measures a training step on the CPU; on a GPU set --trainer.max_steps")
        precision = str(trainer_config.get("precision") or "32-true")
        precision = {"32": "32-true", "bf16": "bf16-mixed"}.get(precision, precision)
        batch, size, _ = self._probe_shape()
        choice = fastest_cpu_precision(self.model, batch, size, candidates=(precision,))
        validating = self.model.measured_eval_channels_last  # measured already where precision=auto
        validating = self._validation_format(choice, True) if validating is None else validating
        self.model.use_measured_memory_format(choice.channels_last, validating)
        step_ms = choice.step_ms[choice.chosen]
        validation = validation_cost(self.model, self.datamodule, choice.precision, recalibration_images)
        every = max(1, steps_within(minutes, step_ms, other_ms=VALIDATIONS * validation.ms) // VALIDATIONS)
        steps = VALIDATIONS * every  # the third validation falls on the last step
        validating = "as --trainer.val_check_interval says" if interval_typed else f"every {every} steps"
        rank_zero_info(
            f"--train_minutes={minutes:g}: a training step of {batch} x {size[0]}x{size[1]} in {choice.chosen} takes "
            f"{step_ms:.0f} ms and {validation.describe()} on this CPU, so max_steps={steps} ({VALIDATIONS} "
            f"validations, {TIME_RESERVE:.0%} of the time for data, logging and checkpoints), validating {validating}"
        )
        interval = {} if interval_typed else {"val_check_interval": every, "check_val_every_n_epoch": None}
        return {"max_steps": steps} | interval


# Lightning's own method for it would reject an older checkpoint's flat options.
setattr(BiSeNetCLI, CHECKPOINT_HYPERPARAMETERS, BiSeNetCLI.parse_checkpoint_hyperparameters)


def build_cli(args: list[str] | None, run: bool = True) -> BiSeNetCLI:
    return BiSeNetCLI(
        SegmentationModule,
        # Lightning's Trainer plus --trainer.precision=auto (on a CPU: the precision measured fastest).
        trainer_class=Trainer,
        subclass_mode_data=True,
        # The optimiser and schedule are the model's (the reference recipe), set as model options.
        auto_configure_optimizers=False,
        args=args,
        run=run,
        # The resolved config goes into each logger's own run folder (and W&B's run config).
        save_config_callback=SaveConfigToLoggers,
        save_config_kwargs={"save_to_log_dir": False},
        parser_kwargs={
            "epilog": TOOLS_HELP,
            "formatter_class": argparse.RawDescriptionHelpFormatter,
            "exit_on_error": False,  # main() reports parse errors as one line
        },
    )
