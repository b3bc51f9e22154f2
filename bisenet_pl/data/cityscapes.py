"""Cityscapes fine annotations in the official layout, mapped to the 19 evaluation classes."""

from __future__ import annotations

from pathlib import Path

from cityscapesscripts.helpers.labels import labels as CITYSCAPES_LABELS

from bisenet_pl.data.base import SegmentationDataModule
from bisenet_pl.data.dataset import LabelMap, Sample, lookup_table
from bisenet_pl.errors import DataError

_TRAIN_LABELS = sorted(
    (label for label in CITYSCAPES_LABELS if 0 <= label.trainId < 255), key=lambda label: label.trainId
)
CITYSCAPES_CLASSES = [label.name for label in _TRAIN_LABELS]
CITYSCAPES_PALETTE = [tuple(label.color) for label in _TRAIN_LABELS]
#: labelId -> trainId for the 19 classes, from the official label table.
CITYSCAPES_ID_TO_TRAIN_ID = {label.id: label.trainId for label in _TRAIN_LABELS}
#: Every other labelId is ignored (void, or not evaluated).
CITYSCAPES_VOID_IDS = [
    label.id for label in CITYSCAPES_LABELS if label.id >= 0 and label.id not in CITYSCAPES_ID_TO_TRAIN_ID
]
# The reference's normalisation statistics for Cityscapes (RGB, [0, 1]).
CITYSCAPES_MEAN = (0.3257, 0.3690, 0.3223)
CITYSCAPES_STD = (0.2112, 0.2148, 0.2115)


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes: ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with
    ``gtFine/<split>/<city>/*_gtFine_labelIds.png``; 19 classes, everything else ignored.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        **kwargs: the options every DataModule takes (see ``SegmentationDataModule``).
    """

    num_classes = len(CITYSCAPES_CLASSES)
    class_names = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE

    def __init__(
        self,
        root: str = "data/cityscapes",
        crop_size: tuple[int, int] = (512, 1024),
        scale_range: tuple[float, float] = (0.25, 2.0),
        mean: tuple[float, float, float] = CITYSCAPES_MEAN,
        std: tuple[float, float, float] = CITYSCAPES_STD,
        **kwargs,
    ) -> None:
        super().__init__(root, crop_size=crop_size, scale_range=scale_range, mean=mean, std=std, **kwargs)

    def samples(self, split: str) -> list[Sample]:
        image_root = self.root / "leftImg8bit" / split
        label_root = self.root / "gtFine" / split
        if not image_root.is_dir():
            raise DataError(
                f"Cityscapes split {split!r} not found: expected {image_root} (official layout: "
                "leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png)"
            )
        samples: list[Sample] = []
        lonely: list[Path] = []
        for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
            stem = image.name.removesuffix("_leftImg8bit.png")
            label = label_root / image.parent.name / f"{stem}_gtFine_labelIds.png"
            if label.is_file():
                samples.append((image, label))
            else:
                lonely.append(image)
        if lonely:
            raise DataError(
                f"{len(lonely)} Cityscapes images without a gtFine labelIds file, e.g. {lonely[0]} (expected "
                f"{label_root}/<city>/<stem>_gtFine_labelIds.png)"
            )
        if not samples:
            raise DataError(f"no *_leftImg8bit.png images under {image_root}/<city>/")
        return samples

    def label_map(self) -> LabelMap:
        return lookup_table(CITYSCAPES_ID_TO_TRAIN_ID, CITYSCAPES_VOID_IDS, self.ignore_index)
