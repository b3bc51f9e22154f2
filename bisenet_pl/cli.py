"""The ``bisenet-pl`` command: Lightning's fit/validate/test/predict, plus dataset tools."""

from __future__ import annotations

import argparse
import re
import signal
import sys
from pathlib import Path
from typing import Optional

import torch
import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from bisenet_pl.batchnorm import BatchNormRecalibration, recalibrate_batchnorm
from bisenet_pl.compat import subcommand_parser
from bisenet_pl.data import SegmentationDataModule, dataset_statistics
from bisenet_pl.data.base import fixed_subset
from bisenet_pl.data.config import datamodule_from_config
from bisenet_pl.errors import ConfigError, UserError
from bisenet_pl.files import atomic_write, check_writable
from bisenet_pl.loggers import ConsoleReport, ProgressBar, SaveConfigToLoggers, TrainingTime, ValidationImages
from bisenet_pl.models import convert_coincheung_state_dict
from bisenet_pl.models.hub import save_pretrained
from bisenet_pl.models.weights import (
    RELEASED_WEIGHTS,
    check_lightning_checkpoint,
    read_state_dict,
    read_weights_info,
    save_inference_weights,
    weights_location,
)
from bisenet_pl.module import SegmentationModule
from bisenet_pl.precision import TIME_RESERVE, fastest_cpu_precision, steps_within
from bisenet_pl.trainer import LastCheckpoint, Trainer, auto_precision
from bisenet_pl.writer import SegmentationWriter

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
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        checkpoint = self.config[subcommand].get("ckpt_path") if subcommand else None
        if checkpoint and Path(checkpoint).is_file():  # before Lightning unpickles it with a traceback
            check_lightning_checkpoint(checkpoint)
        # What the user set (config files and command line), before Lightning reads --ckpt_path.
        self._model_as_parsed = (subcommand, self.config[subcommand].model.clone()) if subcommand else None

    def before_instantiate_classes(self) -> None:
        if self._model_as_parsed is not None:  # a subcommand (run=False parses no subcommand)
            subcommand, typed = self._model_as_parsed
            restore_user_model_options(typed, self.config[subcommand].model, subcommand_parser(self, subcommand))

    def _before_subcommand(self) -> None:
        # Before the trainer creates log folders: bad data or an unwritable output leaves nothing behind.
        self.datamodule.check_data(self.subcommand)
        check_writable(self.trainer.default_root_dir, "trainer.default_root_dir")
        for logger in self.trainer.loggers:
            if logger.save_dir:
                check_writable(logger.save_dir, f"the {type(logger).__name__}'s save_dir")
        for callback in self.trainer.callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath and self.subcommand == "fit":
                check_writable(callback.dirpath, "the checkpoint dirpath")
            if isinstance(callback, SegmentationWriter) and callback.output_dir and self.subcommand == "predict":
                check_writable(callback.output_dir, "prediction_writer.output_dir")

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
        subcommand_config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = {**subcommand_config.get("trainer", {}), **kwargs}
        minutes = subcommand_config.get("train_minutes")
        if minutes is not None and minutes <= 0:
            raise ConfigError(f"--train_minutes must be > 0; got {minutes}")
        if config.get("precision") == "auto":
            kwargs["precision"] = self.fastest_precision(config.get("accelerator", "auto"))
        if minutes is not None and self.subcommand in (None, "fit"):
            kwargs |= self.schedule_for_minutes(minutes, {**config, **kwargs})
        return super().instantiate_trainer(**kwargs)

    def _cpu_training(self, accelerator: object) -> bool:
        return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())

    def _probe_shape(self) -> tuple[int, tuple[int, int], bool]:
        """Batch, size and kind of the step this run repeats: a training step when fitting, else a forward pass."""
        data, train = self.datamodule, self.subcommand in (None, "fit")  # None: built with run=False, to fit
        return (max(2, data.batch_size) if train else data.val_batch_size), tuple(data.crop_size), train

    def fastest_precision(self, accelerator: object) -> str:
        """``trainer.precision=auto``: on a CPU, the precision this run's own step measures fastest
        in (see :mod:`bisenet_pl.precision`); on a GPU, bf16-mixed where it computes bf16, else 16-mixed."""
        if not self._cpu_training(accelerator):
            precision, reason = auto_precision(accelerator if isinstance(accelerator, str) else "auto")
            rank_zero_info(f"trainer.precision=auto: {precision}, because {reason}")
            return precision
        batch, size, train = self._probe_shape()
        choice = fastest_cpu_precision(self.model, batch, size, train=train)
        rank_zero_info(choice.describe())
        return choice.precision

    def schedule_for_minutes(self, minutes: float, trainer_config: dict) -> dict:
        """``--train_minutes``: ``max_steps`` from the measured time of a training step in the run's
        precision (cached with ``auto``'s measurements), and three validations at thirds of them."""
        if not self._cpu_training(trainer_config.get("accelerator", "auto")):
            raise ConfigError("--train_minutes measures a training step on the CPU; on a GPU set --trainer.max_steps")
        precision = str(trainer_config.get("precision") or "32-true")
        precision = {"32": "32-true", "bf16": "bf16-mixed", "16-mixed": "bf16-mixed"}.get(precision, precision)
        batch, size, _ = self._probe_shape()
        step_ms = fastest_cpu_precision(self.model, batch, size, candidates=(precision,)).step_ms[precision]
        every = max(1, steps_within(minutes, step_ms) // 3)
        steps = 3 * every  # the third validation falls on the last step
        rank_zero_info(
            f"--train_minutes={minutes:g}: a training step of {batch} x {size[0]}x{size[1]} in {precision} takes "
            f"{step_ms:.0f} ms "
            f"on this CPU, so max_steps={steps} ({TIME_RESERVE:.0%} of the time kept for validation, data and "
            f"checkpoints), validating every {every} steps"
        )
        return {"max_steps": steps, "val_check_interval": every, "check_val_every_n_epoch": None}


#: Model options a checkpoint always decides: the network's shape and what the data links.
CHECKPOINT_DECIDES = ("net", "num_classes", "ignore_index", "class_names")


def restore_user_model_options(typed, model, parser) -> None:
    """Undo Lightning's overwrite of user-set model options by a ``--ckpt_path``'s hyperparameters.

    Since Lightning 2.5.5, ``LightningCLI`` lays the checkpoint's saved hyperparameters over the
    parsed config, command line included, so ``--model.eval_mode=msf`` with a checkpoint
    evaluated ``ss``. ``typed`` is the model config as parsed; options in it that differ from
    the ``parser``'s defaults win again in ``model``; options left at their default, and the
    network itself, come from the checkpoint.
    """
    defaults = parser.get_defaults()["model"]
    for key, value in typed.items():
        if key.split(".", 1)[0] in CHECKPOINT_DECIDES:
            continue
        if value != defaults.get(key):
            model[key] = value


def find_last_checkpoint(roots: list[Path]) -> Path:
    """The newest last.ckpt under any of ``roots`` (the default root dir and the loggers' save
    dirs), whichever logger version or W&B run wrote it.

    Lightning alone would look only in the new run's own (next version's) folder.
    """
    found = {path for root in roots for path in root.rglob("last*.ckpt")}
    if not found:
        where = ", ".join(str(root) for root in dict.fromkeys(roots))
        raise ConfigError(
            f"--ckpt_path last: no last.ckpt under {where} (trainer.default_root_dir, logger save_dir) to resume from"
        )
    return max(found, key=lambda path: path.stat().st_mtime)


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


def demo_command(args: list[str]) -> None:
    """``bisenet-pl demo``: a page on this machine (Gradio) that segments an uploaded image or video."""
    from bisenet_pl.demo import DemoModel, build_app

    parser = argparse.ArgumentParser(prog="bisenet-pl demo", description=demo_command.__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ckpt_path", help="a checkpoint written by bisenet-pl fit")
    source.add_argument(
        "--model.pretrained",
        dest="pretrained",
        default="bisenetv2_camvid",
        help=f"released weights ({', '.join(RELEASED_WEIGHTS)}), a weights file or a Hub folder or org/name",
    )
    parser.add_argument("--config", type=Path, help="a checkpoint's training config (default: fit's config.yaml)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to serve on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    options = parser.parse_args(args)
    if options.ckpt_path:
        check_lightning_checkpoint(options.ckpt_path)
    model = DemoModel.load(options.ckpt_path or options.pretrained, options.config)
    try:
        build_app(model).launch(server_name=options.host, server_port=options.port, max_file_size="50mb")
    finally:
        model.close()


def sweep_command(args: list[str]) -> None:
    """``bisenet-pl sweep``: run a W&B sweep file's runs here, in turn, without a W&B server."""
    from bisenet_pl.sweep import run_sweep, summary

    parser = argparse.ArgumentParser(
        prog="bisenet-pl sweep", description=sweep_command.__doc__, epilog="Arguments after -- go to every run."
    )
    parser.add_argument("sweep", type=Path, help="a sweep file (sweeps/*.yaml), the one wandb agent reads")
    parser.add_argument("--seeds", type=int, default=1, help="runs per combination, with seeds 42, 1, 2, ...")
    parser.add_argument("--count", type=int, help="how many runs a random search draws")
    parser.add_argument("--output", type=Path, help="where the run folders go (default: outputs/sweeps/NAME)")
    parser.add_argument("--metric", default="val/mIoU", help="the metric of the closing table")
    extra = args[args.index("--") + 1 :] if "--" in args else []
    options = parser.parse_args(args[: args.index("--")] if "--" in args else args)
    folders = run_sweep(options.sweep, options.seeds, options.count, options.output, extra)
    print(summary(folders, options.metric))


def stats_command(args: list[str]) -> None:
    """``bisenet-pl stats``: statistics of one split of the configured dataset (sizes, class shares,
    mean and std, median-frequency class weights)."""
    parser = argparse.ArgumentParser(prog="bisenet-pl stats", description=stats_command.__doc__)
    parser.add_argument("--config", type=Path, required=True, help="a training config (its data: section)")
    parser.add_argument("--data.root", dest="data_root", help="the data's root instead of the config's")
    parser.add_argument("--split", choices=["train", "val", "test"], default="train")
    options = parser.parse_args(args)
    datamodule = datamodule_from_config(options.config, options.data_root)
    split = options.split
    datamodule.prepare_data()
    stats = dataset_statistics(datamodule.dataset(split), datamodule.class_names)
    print(f"{type(datamodule).__name__} {split} split at {datamodule.root}")
    print(stats.format())
    print(f"class_weights (median frequency): [{', '.join(f'{w:.4f}' for w in stats.median_frequency_weights())}]")


def convert_command(args: list[str]) -> None:
    """``bisenet-pl convert``: a CoinCheung/BiSeNet state dict in this package's layout."""
    parser = argparse.ArgumentParser(prog="bisenet-pl convert", description=convert_command.__doc__)
    parser.add_argument("reference", help="CoinCheung/BiSeNet .pth file (or URL)")
    parser.add_argument("output", type=Path, help="where to write the converted state dict")
    options = parser.parse_args(args)
    state = convert_coincheung_state_dict(read_state_dict(options.reference))
    with atomic_write(options.output) as partial:
        torch.save(state, partial)
    print(f"wrote {len(state)} tensors to {options.output}")


GIVE_CONFIG = "give the training config as --config"


def export_command(args: list[str]) -> None:
    """``bisenet-pl export``: a trained network for deployment (eval mode, aux heads dropped,
    BatchNorm folded) as ONNX (dynamic batch and size), OpenVINO IR or TorchScript, in fp32, bf16 or
    calibrated int8, optionally from 8-bit images to class ids; or as a float16 weights file that
    ``--model.pretrained`` and ``SegmentationModule.from_pretrained`` load."""
    from bisenet_pl.deploy import (
        EXPORT_SUFFIXES,
        IMAGE_INPUTS,
        ExportOptions,
        compare_with_pytorch,
        describe_comparison,
        export,
        inference_network,
    )
    from bisenet_pl.deploy.export import check_format
    from bisenet_pl.deploy.runtime import backend_for

    parser = argparse.ArgumentParser(prog="bisenet-pl export", description=export_command.__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="a checkpoint written by bisenet-pl fit")
    source.add_argument(
        "--model.pretrained",
        dest="pretrained",
        help=f"released weights ({', '.join(RELEASED_WEIGHTS)}) or a weights file",
    )
    parser.add_argument(
        "--format",
        choices=[*EXPORT_SUFFIXES, "weights", "hub"],
        default="onnx",
        help="weights: a float16 weights file; hub: a folder in the Hugging Face Hub's layout (config.json, "
        "model.safetensors, README.md)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="default: the checkpoint's path (the weights' name here) with .onnx, .xml, .torchscript.pt or .pt",
    )
    parser.add_argument(
        "--precision", choices=["fp32", "bf16", "int8", "auto"], default="fp32",
        help="bf16: OpenVINO only; int8: calibrated on --calibration; auto (OpenVINO): fp32 or bf16, whichever runs "
        "the file faster on this CPU at --size (bf16 only within 1.0 val mIoU of fp32 with --score)",
    )  # fmt: skip
    parser.add_argument("--input", dest="image_input", choices=IMAGE_INPUTS, default="float",
                        help="float: normalised images; uint8_nchw/uint8_nhwc: 8-bit RGB as read, normalised inside "
                        "the model")  # fmt: skip
    parser.add_argument(
        "--labels",
        choices=["int32", "int64"],
        help="put the argmax in the graph: class ids of this type instead of logits",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[512, 1024],
        metavar=("H", "W"),
        help="example input size for tracing (any size works after)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the training config, for the data's normalisation and colours (default: the config.yaml fit saved "
        "beside the checkpoint)",
    )
    parser.add_argument("--data.root", dest="data_root", help="the data's root instead of the config's")
    parser.add_argument(
        "--bn_images", type=int, default=0, metavar="N",
        help="recompute BatchNorm statistics on N training images of the config's data at their full size first (0: "
        "keep the checkpoint's)",
    )  # fmt: skip
    parser.add_argument(
        "--calibration",
        type=Path,
        help="int8: a data config (its train split) or a folder of images; default: the training config",
    )
    parser.add_argument(
        "--calibration_images", type=int, default=300, metavar="N", help="int8: how many images calibrate it"
    )
    parser.add_argument(
        "--score", action="store_true", help="score the file and the PyTorch network (fp32) on the config's val split"
    )
    options = parser.parse_args(args)
    if options.bn_images < 0:
        raise ConfigError(f"--bn_images must be >= 0; got {options.bn_images}")
    if options.calibration_images < 1:
        raise ConfigError(f"--calibration_images must be >= 1; got {options.calibration_images}")
    weights_only = options.format in ("weights", "hub")
    if weights_only and (options.precision, options.image_input, options.labels) != ("fp32", "float", None):
        raise ConfigError(
            f"--format {options.format} writes the network's weights: --precision, --input and --labels apply to "
            "onnx, openvino and torchscript"
        )
    if options.precision == "auto" and options.format != "openvino":
        raise ConfigError(
            "--precision auto chooses OpenVINO's inference precision (fp32 or bf16) by timing the file: use --format "
            "openvino "
            "(ONNX Runtime computes fp32; int8 is --precision int8)"
        )
    if not weights_only:
        check_format(options.format, "fp32" if options.precision == "auto" else options.precision)
    suffix = {"weights": ".pt", "hub": "", **EXPORT_SUFFIXES}[options.format]
    source = options.ckpt_path or options.pretrained
    if options.ckpt_path and not Path(source).is_file():
        raise ConfigError(f"--ckpt_path {source}: no such checkpoint")
    # A released name has no folder of its own to write beside: its outputs go to the current one.
    output = options.output or (
        Path(source).with_suffix(suffix) if options.ckpt_path else Path(Path(source).stem + suffix)
    )
    check_export_output(output, weights_location(source), named=options.output is not None, format=options.format)
    check_writable(output.parent, "--output")
    if options.ckpt_path:
        check_lightning_checkpoint(source)
    module = SegmentationModule.from_pretrained(source)
    info = read_weights_info(source)
    what = f"{type(module.net).__name__}, {module.num_classes} classes"
    config = options.config
    if config is None and options.ckpt_path and (saved := Path(source).parent.parent / "config.yaml").is_file():
        config = saved  # fit saves it in the run folder, checkpoints in run/checkpoints
    datamodule = datamodule_from_config(config, options.data_root) if config is not None else None
    no_data = f"no config.yaml beside {source}; {GIVE_CONFIG}"
    if datamodule is not None:
        info.mean, info.std, info.palette = (
            list(datamodule.mean),
            list(datamodule.std),
            [list(c) for c in datamodule.palette],
        )
    if options.bn_images:
        if datamodule is None:
            raise ConfigError(f"--bn_images: {no_data}")
        datamodule.prepare_data()
        used = recalibrate_batchnorm(
            module.net, datamodule.full_size_batches(options.bn_images, max(2, datamodule.batch_size))
        )
        asked = (
            ""
            if used == options.bn_images
            else f" (--bn_images {options.bn_images}; that is all the split has in batches of one size)"
        )
        print(f"recomputed BatchNorm statistics on {used} training images of {datamodule.root} at full size{asked}")
    if weights_only:
        if info.mean is None:
            raise ConfigError(f"--format {options.format}: {no_data}")
        info.training |= {"source": Path(source).name}
        if options.bn_images:
            info.training["batchnorm_images"] = used
        state = inference_network(module.net, fold=False).state_dict()
        if options.format == "hub":
            dataset = type(datamodule).__name__.removesuffix("DataModule") if datamodule is not None else None
            save_pretrained(state, info, output, results=info.training.get("results"), dataset=dataset)
            print(f"wrote {output}/ (config.json, model.safetensors, README.md; {what})")
            return
        save_inference_weights(state, info, output)
        print(f"wrote {output} (float16 weights, {output.stat().st_size / 2**20:.1f} MiB, {what})")
        return
    if options.image_input != "float" and info.mean is None:
        raise ConfigError(f"--input {options.image_input} bakes in the training normalisation: {no_data}")
    if options.score and datamodule is None:
        raise ConfigError(f"--score: {no_data}")
    written_precision = "fp32" if options.precision == "auto" else options.precision
    export_options = ExportOptions(
        options.labels, options.image_input, info.mean, info.std, written_precision, tuple(options.size)
    )
    calibration = None
    if options.precision == "int8":
        calibration = calibration_images(options.calibration, datamodule, options.calibration_images)
    export(module.net, output, options.format, options=export_options, calibration=calibration)
    print(
        f"wrote {output} ({options.format} {options.precision}, {options.image_input} images in, "
        f"{'labels ' + options.labels if options.labels else 'logits'} out, {what})"
    )
    if options.format == "torchscript":
        return
    comparison = compare_with_pytorch(module.net, output, export_options, tuple(options.size))
    runtime, size = backend_for(output), f"{options.size[0]}x{options.size[1]}"
    if options.precision == "fp32":
        print(f"{runtime} agrees with PyTorch at {size} (a random image): {describe_comparison(comparison)}")
    else:
        print(
            f"{runtime} {options.precision} against PyTorch fp32 at {size} (a random image): "
            f"{describe_comparison(comparison)}"
        )
    if options.precision == "auto":
        choose_openvino_precision(module.net, output, export_options, datamodule if options.score else None)
    elif options.score:
        print(score_export(module.net, output, export_options, datamodule)[0])


def check_export_output(output: Path, source: str, named: bool, format: str) -> None:
    """An export never writes over its own input, nor over an existing file the user did not name."""
    written = [output, output.with_suffix(".bin")] if format == "openvino" else [output]
    if Path(source).exists() and any(path.resolve() == Path(source).resolve() for path in written):
        raise ConfigError(f"--output {output} would overwrite the input {source}: give another --output")
    if not named and (existing := [path for path in written if path.exists()]):
        raise ConfigError(f"{existing[0]} exists already: give --output {output} to replace it, or another path")


def choose_openvino_precision(
    net: torch.nn.Module, path: Path, options, datamodule: SegmentationDataModule | None
) -> None:
    """``export --precision auto``: time the written file in fp32 and bf16 at its example size, keep
    the faster (bf16 only if it loses at most 1.0 val mIoU when there is data to score on), and
    record the choice in the file for ``load_predictor``."""
    from bisenet_pl.deploy.accuracy import MIOU_TOLERANCE
    from bisenet_pl.deploy.export import save_openvino
    from bisenet_pl.deploy.runtime import PRECISION_RT_INFO, fastest_openvino_precision, import_openvino

    choice = fastest_openvino_precision(path, size=options.example_size)
    print(choice.describe())
    precision = choice.precision
    if datamodule is not None:
        line, loss = score_export(net, path, options, datamodule, precision)
        print(f"{precision}: {line}")
        if precision != "fp32" and loss > MIOU_TOLERANCE:
            precision = "fp32"
            print(f"{choice.precision} loses more than {MIOU_TOLERANCE} mIoU: keeping fp32")
    model = import_openvino().Core().read_model(str(path))
    model.set_rt_info(precision, PRECISION_RT_INFO)
    save_openvino(model, path)
    print(f"{path} runs in {precision} when loaded (load_predictor reads it from the file)")


def calibration_images(source: Path | None, datamodule: SegmentationDataModule | None, count: int) -> list:
    """``count`` training images (RGB uint8) in a fixed random order: of the data config ``source``,
    of the folder ``source``, or of the training config's data."""
    from bisenet_pl.data.base import list_images
    from bisenet_pl.data.io import read_image

    if source is not None and source.is_dir():
        paths = list_images(source)
        if not paths:
            raise ConfigError(f"--calibration {source}: the folder holds no images")
        images, where = [read_image(paths[i]) for i in fixed_subset(len(paths), count)], source
    else:
        if source is not None:
            if not source.is_file():
                raise ConfigError(f"--calibration {source}: no such data config or folder of images")
            datamodule = datamodule_from_config(source)
        if datamodule is None:
            raise ConfigError(
                "--precision int8 needs calibration images: give --calibration (a data config or a folder), or "
                f"{GIVE_CONFIG}"
            )
        datamodule.prepare_data()
        train = datamodule.dataset("train")
        images, where = (
            [train.load(i)[0] for i in fixed_subset(len(train), count)],
            f"the training split of {datamodule.root}",
        )
    short = f" (--calibration_images {count}: that is all there are)" if len(images) < count else ""
    gray = sum(
        1
        for image in images
        if image.ndim == 3 and (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    )
    print(f"calibrating int8 on {len(images)} images of {where}{short}")
    if gray:
        print(f"note: {gray} of them are grayscale: int8 ranges calibrated on them may not fit colour images")
    return images


def score_export(
    net: torch.nn.Module, path: Path, options, datamodule: SegmentationDataModule, precision: str | None = None
) -> tuple[str, float]:
    """One line saying the val mIoU of the exported file (in ``precision``, default the file's own)
    and of the PyTorch network in fp32, and the mIoU lost."""
    from bisenet_pl.deploy import load_predictor
    from bisenet_pl.deploy.accuracy import MIOU_TOLERANCE, mean_iou, predictor_segmenter, pytorch_segmenter

    datamodule.prepare_data()
    val = datamodule.dataset("val")
    segmenters = {
        "file": predictor_segmenter(
            load_predictor(path, precision=precision),
            options.image_input,
            bool(options.labels),
            options.mean,
            options.std,
        ),
        "pytorch": pytorch_segmenter(net, options.mean, options.std),
    }
    scores = mean_iou(
        segmenters, (val.load(i) for i in range(len(val))), datamodule.num_classes, datamodule.ignore_index
    )
    loss = scores["pytorch"] - scores["file"]
    flag = f" (more than {MIOU_TOLERANCE} lost: check the calibration)" if loss > MIOU_TOLERANCE else ""
    return (
        f"val mIoU on {len(val)} images: the file {scores['file']:.2f}, PyTorch fp32 {scores['pytorch']:.2f}, "
        f"{loss:+.2f} lost{flag}",
        loss,
    )


TOOLS = {
    "stats": stats_command,
    "convert": convert_command,
    "export": export_command,
    "demo": demo_command,
    "sweep": sweep_command,
}


def stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def run_tool(tool, args: list[str]) -> None:
    """A tool (stats, convert, export) that Ctrl-C or SIGTERM ends in one line, its temporary files
    removed on the way out (they live in context managers that an exception unwinds)."""
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        tool(args)
    except KeyboardInterrupt:
        raise SystemExit("bisenet-pl: interrupted; no output was left half-written") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv and argv[0] in TOOLS:
            run_tool(TOOLS[argv[0]], argv[1:])
        else:
            build_cli(args)  # None: LightningCLI reads sys.argv itself
    except argparse.ArgumentError as error:
        cause = user_error(error)
        message = one_line(cause) if cause else parse_error_line(str(error), config_files(argv))
        raise SystemExit(f"bisenet-pl: error: {message} (see bisenet-pl --help)") from None
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise  # a bug, not bad input: keep the traceback
        raise SystemExit(f"bisenet-pl: error: {one_line(cause)}") from None


def config_files(argv: list[str]) -> list[str]:
    """The files given with ``--config`` (``--config F`` or ``--config=F``)."""
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return files + [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]


def parse_error_line(message: str, configs: list[str]) -> str:
    """jsonargparse's nested report in one line: the option as typed and what was wrong; a YAML
    syntax error with the config file it is in (jsonargparse names it ``<unicode string>``)."""
    if "<unicode string>" in message:
        for config in configs:
            try:
                yaml.safe_load(Path(config).read_text())
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
                return f"--config {config}: not valid YAML{where}: {getattr(error, 'problem', None) or error}"
            except OSError:
                continue
    # Nested 'Parser key "data": ... Parser key "batch_size": ... Expected a <int>. Got value: abc'
    # lines; a Union lists one "Expected a ..." per alternative, then "Given value: ...", and an
    # Optional's "Expected a <class 'NoneType'>" alternative is noise.
    keys = re.findall(r'Parser key "([^"]+)"', message)
    reasons = [line.strip().removeprefix("- ") for line in message.splitlines()]
    expected = [r for r in reasons if r.startswith("Expected a") and "NoneType" not in r]
    given = next((r.removeprefix("Given value: ") for r in reasons if r.startswith("Given value: ")), None)
    if keys and len(expected) == 1:
        return f"--{'.'.join(keys)}: {expected[0]}"
    if keys and expected:
        alternatives = " or ".join(r.removeprefix("Expected a ") for r in expected)
        return f"--{'.'.join(keys)}: Expected {alternatives}. Got value: {given}"
    return message.strip().splitlines()[0]


def user_error(error: BaseException | None) -> BaseException | None:
    """The bad-input error behind ``error`` (jsonargparse and Lightning wrap the original);
    Lightning's own MisconfigurationException about a trainer option counts as one."""
    while error is not None:
        if isinstance(error, (UserError, FileNotFoundError, MisconfigurationException)):
            return error
        error = error.__cause__ or error.__context__
    return None


def one_line(error: BaseException) -> str:
    """The error's own message, without the worker traceback a DataLoader worker wraps it in."""
    message = str(error).strip()
    if "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message or type(error).__name__


if __name__ == "__main__":
    main()
