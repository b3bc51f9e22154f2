"""Any dataset given as folders (or list files) of images and class-id masks."""

from __future__ import annotations

from bisenet_pl.data.base import SegmentationDataModule
from bisenet_pl.data.dataset import LabelMap, Sample, lookup_table, pair_by_stem
from bisenet_pl.errors import ConfigError, DataError
from bisenet_pl.visualize import default_palette


class FolderDataModule(SegmentationDataModule):
    """Images in ``root/<image_dir>/<split>/`` and single-channel class-id masks in
    ``root/<mask_dir>/<split>/``, paired by file stem; or, with ``list_file``, pairs listed
    one per line as ``image mask`` (paths relative to ``root``).

    Args:
        root: dataset folder.
        num_classes: number of classes; masks hold 0..num_classes-1.
        mask_ignore_value: the value of unlabelled pixels in the masks (default: ``ignore_index``).
        class_names: names for logs and tables (default ``class_0``...).
        image_dir: images folder under ``root``.
        mask_dir: masks folder under ``root``.
        list_file: a pair-list file per split, as a template such as ``"{split}.txt"``.
        **kwargs: the options every DataModule takes (see ``SegmentationDataModule``).
    """

    palette: list[tuple[int, int, int]]

    def __init__(
        self,
        root: str,
        num_classes: int,
        mask_ignore_value: int | None = None,
        class_names: list[str] | None = None,
        image_dir: str = "images",
        mask_dir: str = "masks",
        list_file: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(root, **kwargs)
        if not 1 < num_classes <= 255:
            raise ConfigError(f"data.num_classes must be in 2..255; got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"data.class_names has {len(class_names)} names for data.num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.mask_ignore_value = self.ignore_index if mask_ignore_value is None else mask_ignore_value
        self.image_dir = image_dir
        self.mask_dir = mask_dir
        self.list_file = list_file
        self.palette = default_palette(num_classes)

    def samples(self, split: str) -> list[Sample]:
        if not self.root.is_dir():
            raise DataError(f"dataset folder {self.root} does not exist (set --data.root)")
        if self.list_file is None:
            return pair_by_stem(self.root / self.image_dir / split, self.root / self.mask_dir / split)
        list_path = self.root / self.list_file.format(split=split)
        if not list_path.is_file():
            raise DataError(f"pair list {list_path} does not exist")
        samples: list[Sample] = []
        for number, line in enumerate(list_path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise DataError(f"{list_path}:{number}: expected 'image_path mask_path', got {line!r}")
            image, mask = (self.root / field for field in fields)
            for path in (image, mask):
                if not path.is_file():
                    raise DataError(f"{list_path}:{number}: {path} does not exist")
            samples.append((image, mask))
        if not samples:
            raise DataError(f"pair list {list_path} is empty")
        return samples

    def label_map(self) -> LabelMap:
        return lookup_table({c: c for c in range(self.num_classes)}, [self.mask_ignore_value], self.ignore_index)
