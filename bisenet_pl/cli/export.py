"""``bisenet-pl export``: a trained network as a deployable file or a weights file, its input read once."""

from __future__ import annotations

import argparse
from pathlib import Path

from bisenet_pl.batchnorm import recalibrate_batchnorm
from bisenet_pl.cli.errors import Interrupted
from bisenet_pl.data.config import datamodule_from_config
from bisenet_pl.errors import ConfigError
from bisenet_pl.files import check_not_a_folder, check_writable
from bisenet_pl.models.hub import save_pretrained
from bisenet_pl.models.weights import (
    RELEASED_WEIGHTS,
    StoredWeights,
    check_lightning_checkpoint,
    save_inference_weights,
    weights_location,
)
from bisenet_pl.module import SegmentationModule


def export_command(args: list[str]) -> None:
    """``bisenet-pl export``: a trained network for deployment (eval mode, aux heads dropped,
    BatchNorm folded) as ONNX (dynamic batch and size), OpenVINO IR or TorchScript, in fp32, bf16 or
    calibrated int8, optionally from 8-bit images to class ids; or as a float16 weights file that
    ``--model.pretrained`` and ``SegmentationModule.from_pretrained`` load."""
    from bisenet_pl.deploy import (
        EXPORT_SUFFIXES,
        IMAGE_INPUTS,
        WINOGRAD_SETTINGS,
        ExportOptions,
        export,
        inference_network,
    )
    from bisenet_pl.deploy.calibration import CALIBRATION_IMAGES, GIVE_CONFIG, calibration_images
    from bisenet_pl.deploy.export import check_format
    from bisenet_pl.deploy.labels import LABEL_RESOLUTIONS, check_label_resolution

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
        "--label_resolution", choices=LABEL_RESOLUTIONS, default="full",
        help="with --labels: half takes the argmax at half the image's size and repeats each id 2x2 (faster; class "
        "boundaries up to a pixel off)",
    )  # fmt: skip
    parser.add_argument(
        "--winograd", choices=WINOGRAD_SETTINGS, default="off",
        help="auto (fp32 onnx or openvino): compute the 3x3 layers that time faster so on this CPU at --size as "
        "Winograd F(4x4, 3x3) (fewer multiplications; results within about 1e-5 of the direct ones)",
    )  # fmt: skip
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
        "--calibration_images",
        type=int,
        metavar="N",
        help=f"int8: how many images calibrate it (default: {CALIBRATION_IMAGES})",
    )
    parser.add_argument(
        "--score", action="store_true", help="score the file and the PyTorch network (fp32) on the config's val split"
    )
    options = parser.parse_args(args)
    if options.bn_images < 0:
        raise ConfigError(f"--bn_images must be >= 0; got {options.bn_images}")
    if options.precision != "int8" and (options.calibration is not None or options.calibration_images is not None):
        given = "--calibration" if options.calibration is not None else "--calibration_images"
        raise ConfigError(f"{given} calibrates an int8 file: add --precision int8, or leave it out")
    if options.calibration_images is None:
        options.calibration_images = CALIBRATION_IMAGES
    if options.calibration_images < 1:
        raise ConfigError(f"--calibration_images must be >= 1; got {options.calibration_images}")
    if min(options.size) < 1:
        raise ConfigError(
            f"--size H W must be two sizes >= 1 (the example image's); got {' '.join(map(str, options.size))}"
        )
    check_label_resolution(options.label_resolution, options.labels)
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
    if options.winograd == "auto" and options.precision == "auto":
        raise ConfigError(
            "--winograd auto is for fp32 files and --precision auto may choose bf16: give --precision fp32 with it"
        )
    if weights_only and options.winograd != "off":
        raise ConfigError(f"--winograd applies to onnx and openvino files; --format {options.format} writes weights")
    if not weights_only:
        check_format(
            options.format,
            "fp32" if options.precision == "auto" else options.precision,
            options.label_resolution,
            options.winograd,
        )
    suffix = {"weights": ".pt", "hub": "", **EXPORT_SUFFIXES}[options.format]
    source = options.ckpt_path or options.pretrained
    if options.ckpt_path and not Path(source).is_file():
        raise ConfigError(f"--ckpt_path {source}: no such checkpoint")
    # A released name has no folder of its own to write beside: its outputs go to the current one.
    output = options.output or (
        Path(source).with_suffix(suffix) if options.ckpt_path else Path(Path(source).stem + suffix)
    )
    check_export_output(output, weights_location(source), options.output is not None, options.format, suffix)
    check_writable(output.parent, "--output")
    stored = StoredWeights.read(source)  # the one time the input is read
    if options.ckpt_path:
        check_lightning_checkpoint(stored)
    module = SegmentationModule.from_pretrained(stored)
    info = module.weights_info  # what from_pretrained read from the file (normalisation, provenance)
    what = f"{type(module.net).__name__}, {module.num_classes} classes"
    config = options.config
    if config is None and options.ckpt_path and (saved := Path(source).parent.parent / "config.yaml").is_file():
        config = saved  # fit saves it in the run folder, checkpoints in run/checkpoints
    datamodule = datamodule_from_config(config, options.data_root) if config is not None else None
    no_data = (
        f"no config.yaml in the run folder of {source}; {GIVE_CONFIG}"
        if options.ckpt_path
        else f"a weights file holds no data config; {GIVE_CONFIG}"
    )
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
        output.parent.mkdir(parents=True, exist_ok=True)  # found writable before any work
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
        options.labels, options.image_input, info.mean, info.std, written_precision, tuple(options.size),
        options.label_resolution, options.winograd,
    )  # fmt: skip
    calibration = None
    if options.precision == "int8":
        calibration = calibration_images(options.calibration, datamodule, options.calibration_images)
    output.parent.mkdir(parents=True, exist_ok=True)  # found writable before any work
    export(module.net, output, options.format, options=export_options, calibration=calibration, say=print)
    print(
        f"wrote {output} ({options.format} {options.precision}, {options.image_input} images in, "
        f"{'labels ' + options.labels if options.labels else 'logits'}"
        f"{' (argmax at half resolution)' if options.label_resolution == 'half' else ''} out, {what})"
    )
    if options.format == "torchscript":
        return
    try:
        check_written_file(module.net, output, options, export_options, datamodule)
    except KeyboardInterrupt:
        raise Interrupted(
            f"bisenet-pl: interrupted after {output} was written whole, before it was checked against PyTorch"
        ) from None


def check_written_file(net, output: Path, options, export_options, datamodule) -> None:
    """The written file against PyTorch on a random image, then its precision choice or its score."""
    from bisenet_pl.deploy import compare_with_pytorch, describe_comparison
    from bisenet_pl.deploy.accuracy import choose_openvino_precision, score_export
    from bisenet_pl.deploy.predictor import backend_for

    comparison = compare_with_pytorch(net, output, export_options, tuple(options.size))
    runtime, size = backend_for(output), f"{options.size[0]}x{options.size[1]}"
    if options.precision == "fp32":
        print(f"{runtime} agrees with PyTorch at {size} (a random image): {describe_comparison(comparison)}")
    else:
        print(
            f"{runtime} {options.precision} against PyTorch fp32 at {size} (a random image): "
            f"{describe_comparison(comparison)}"
        )
    if options.precision == "auto":
        choose_openvino_precision(net, output, export_options, datamodule if options.score else None)
    elif options.score:
        print(score_export(net, output, export_options, datamodule)[0])


def check_export_output(output: Path, source: str, named: bool, format: str, suffix: str) -> None:
    """An export never writes over its own input, nor over an existing file the user did not name; a file
    goes to a file path (not a folder), and ONNX and OpenVINO files carry the ``suffix`` that tells them apart."""
    if format != "hub":
        check_not_a_folder(output, "--output", example=output / (Path(source).stem + suffix))
    if format in ("onnx", "openvino") and output.suffix.lower() != suffix:
        kind = {"onnx": "an ONNX", "openvino": "an OpenVINO"}[format]
        raise ConfigError(
            f"--output {output}: {kind} file ends in {suffix} (load_predictor and the runtimes tell formats by it)"
        )
    written = [output, output.with_suffix(".bin")] if format == "openvino" else [output]
    if Path(source).exists() and any(path.resolve() == Path(source).resolve() for path in written):
        raise ConfigError(f"--output {output} would overwrite the input {source}: give another --output")
    if not named and (existing := [path for path in written if path.exists()]):
        raise ConfigError(f"{existing[0]} exists already: give --output {output} to replace it, or another path")
