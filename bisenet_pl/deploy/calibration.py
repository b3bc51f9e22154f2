"""The images an int8 file is calibrated on: a fixed random subset of a training split or a folder, the
same for ``bisenet-pl export`` and the speed benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bisenet_pl.data.config import datamodule_from_config
from bisenet_pl.data.dataset import fixed_subset, list_images
from bisenet_pl.data.io import read_image
from bisenet_pl.errors import ConfigError

if TYPE_CHECKING:
    from bisenet_pl.data import SegmentationDataModule

GIVE_CONFIG = "give the training config as --config"
#: How many training images calibrate an int8 file unless told (export and the speed benchmark alike).
CALIBRATION_IMAGES = 300


def calibration_images(source: Path | None, datamodule: SegmentationDataModule | None, count: int) -> list:
    """``count`` training images (RGB uint8) in a fixed random order: of the data config ``source``,
    of the folder ``source``, or of the training config's data."""
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
