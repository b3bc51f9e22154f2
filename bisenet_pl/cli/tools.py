"""The small tools of ``bisenet-pl``: ``stats``, ``convert``, ``sweep`` and ``demo``."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bisenet_pl.data import dataset_statistics
from bisenet_pl.data.config import datamodule_from_config
from bisenet_pl.errors import ConfigError
from bisenet_pl.files import atomic_write, check_not_a_folder, check_writable
from bisenet_pl.models import convert_coincheung_state_dict
from bisenet_pl.models.weights import RELEASED_WEIGHTS, check_lightning_checkpoint, read_state_dict


def port_number(text: str) -> int:
    port = int(text) if text.isdecimal() else 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1-65535, got {text!r}")
    return port


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
    parser.add_argument("--port", type=port_number, default=7860, help="the port to serve on (1-65535)")
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
    if options.output is not None:
        check_writable(options.output, "--output")  # a file, or a folder that cannot be made: before any run
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
    check_not_a_folder(options.output, "convert: output")
    if Path(options.reference).exists() and options.output.resolve() == Path(options.reference).resolve():
        raise ConfigError(f"convert: output {options.output} is the input: give another path (the input is kept)")
    check_writable(options.output.parent, "convert: output")
    state = convert_coincheung_state_dict(read_state_dict(options.reference))
    with atomic_write(options.output) as partial:
        torch.save(state, partial)
    print(f"wrote {len(state)} tensors to {options.output}")
