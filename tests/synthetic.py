"""Tiny synthetic datasets in each supported on-disk layout."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bisenet_pl.models import SegmentationNetwork

SIZE = (48, 64)  # height, width


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_gray(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), values.astype(np.uint8))


def block_label(rng: np.random.Generator, values: list[int], size=SIZE, block: int = 8) -> np.ndarray:
    """A label of constant 8x8 blocks, so that resampling keeps it meaningful."""
    h, w = size
    coarse = rng.choice(values, size=(h // block, w // block))
    return np.kron(coarse, np.ones((block, block), dtype=np.int64)).astype(np.uint8)


def image_for(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB image whose colour encodes the label (20 grey levels per class) plus noise."""
    base = (label.astype(np.int16) * 20) % 250
    noise = rng.integers(0, 4, size=label.shape)
    return np.repeat((base + noise).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def make_camvid_segnet(
    root: Path, counts: dict[str, int] | None = None, seed: int = 0, sequences: tuple[str, ...] = ("0001TP",)
) -> Path:
    """SegNet layout: split/ and splitannot/ with values 0..10 and void 11; file names start with
    their video sequence, taken from ``sequences`` in turn."""
    rng = np.random.default_rng(seed)
    for split, count in (counts or {"train": 4, "val": 2, "test": 2}).items():
        for index in range(count):
            label = block_label(rng, list(range(12)))
            name = f"{sequences[index % len(sequences)]}_{index:06d}.png"
            write_rgb(root / split / name, image_for(label, rng))
            write_gray(root / f"{split}annot" / name, label)
    # The real release's list files hold absolute paths that exist nowhere; they must not matter.
    (root / "train.txt").write_text("/SegNet/CamVid/train/missing.png /SegNet/CamVid/trainannot/missing.png\n")
    return root


CAMVID_COLOURS = {  # a few of the 32 classes of class_dict.csv
    "Sky": (128, 128, 128),
    "Wall": (64, 192, 0),
    "Road": (128, 64, 128),
    "LaneMkgsDriv": (128, 0, 192),
    "Child": (64, 128, 64),
    "Void": (0, 0, 0),
}


def make_camvid_colour(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """The 32-class colour layout: split/, split_labels/*_L.png RGB, class_dict.csv."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "class_dict.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "r", "g", "b"])
        for name, (r, g, b) in CAMVID_COLOURS.items():
            writer.writerow([name, r, g, b])
    colours = np.array(list(CAMVID_COLOURS.values()), dtype=np.uint8)
    for split, count in (counts or {"train": 3, "val": 2}).items():
        for index in range(count):
            which = block_label(rng, list(range(len(colours))))
            write_rgb(root / split / f"0016E5_{index:05d}.png", image_for(which, rng))
            write_rgb(root / f"{split}_labels" / f"0016E5_{index:05d}_L.png", colours[which])
    return root


def make_cityscapes(root: Path, counts: dict[str, int] | None = None, seed: int = 0) -> Path:
    """Official layout with labelIds 0..33."""
    rng = np.random.default_rng(seed)
    for split, count in (counts or {"train": 3, "val": 2}).items():
        for index in range(count):
            city = ["aachen", "bremen"][index % 2]
            stem = f"{city}_{index:06d}_000019"
            label = block_label(rng, list(range(34)))
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image_for(label, rng))
            write_gray(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label)
    return root


def make_folder(root: Path, num_classes: int = 3, ignore_value: int = 255, counts=None, seed: int = 0) -> Path:
    """images/<split>/*.jpg with masks/<split>/*.png."""
    rng = np.random.default_rng(seed)
    for split, count in (counts or {"train": 3, "val": 2}).items():
        for index in range(count):
            label = block_label(rng, list(range(num_classes)) + [ignore_value])
            write_rgb(root / "images" / split / f"img{index}.jpg", image_for(label, rng))
            write_gray(root / "masks" / split / f"img{index}.png", label)
    return root


class KillAtStep(L.Callback):
    """Ends the process abruptly after optimizer step ``step``, as a crash or a kill would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os._exit(3)


# The one tiny network of the tests: the SegmentationNetwork contract and nothing else.
class Classifier(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(self.classifier(features), size=size, mode="bilinear", align_corners=False)


class TinyNetwork(SegmentationNetwork):
    """A strided conv-BN-ReLU body, a head and one aux head: the contract and nothing else."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__(num_classes)
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.head = Classifier(width, num_classes)
        self.aux_heads = nn.ModuleDict({"body": Classifier(width, num_classes)})

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        features, size = self.body(images), images.shape[-2:]
        logits = self.head(features, size)
        if not self.training:
            return logits
        return (logits, *(head(features, size) for head in self.aux_heads.values()))


def write_tiny_weights(path: Path, width: int = 8) -> Path:
    """A weights file of a TinyNetwork with the released file's classes, normalisation and palette: for the
    tests of exporting and deploying mechanics, which export it in seconds (BiSeNetV2: about 12 s each on a
    2-core AVX2 CPU, most of it torch.export tracing the dynamic sizes)."""
    from dataclasses import replace

    from conftest import trained_like

    from bisenet_pl.models.weights import read_weights_info, save_inference_weights

    torch.manual_seed(0)
    net = trained_like(TinyNetwork(num_classes=11, width=width))
    info = replace(
        read_weights_info("bisenetv2_camvid"),
        network={"class_path": "synthetic.TinyNetwork", "init_args": {"width": width}},
        training={},
    )
    state = {key: value for key, value in net.state_dict().items() if not key.startswith("aux_heads.")}
    save_inference_weights(state, info, path)
    return path
