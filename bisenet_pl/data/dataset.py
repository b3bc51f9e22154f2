"""A split as a PyTorch dataset: image/label pairs read (or held decoded in memory), labels mapped to
train ids, and a transform; and the helpers that list and pair a split's files."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset

from bisenet_pl.data.io import IMAGE_SUFFIXES, read_image, read_label
from bisenet_pl.data.predict import SameSizeBatches
from bisenet_pl.data.transforms import to_tensors
from bisenet_pl.errors import DataError

Sample = tuple[Path, Path | None]
LabelMap = Callable[[np.ndarray], np.ndarray]


def lookup_table(classes: dict[int, int], void: Iterable[int], ignore_index: int) -> LabelMap:
    """A strict label map: raw values in ``classes`` become their class, ``void`` values become
    ``ignore_index``, and any other raw value is an error naming the values."""
    table = np.full(256, -1, dtype=np.int16)
    for raw in void:
        table[raw] = ignore_index
    for raw, target in classes.items():
        table[raw] = target

    def apply(label: np.ndarray) -> np.ndarray:
        if label.ndim != 2:
            raise DataError(f"has shape {label.shape}; expected a single-channel class-id image")
        if label.dtype != np.uint8:
            raise DataError(f"has dtype {label.dtype}; expected 8-bit class ids")
        mapped = table[label]
        if (mapped < 0).any():
            bad = sorted(int(v) for v in np.unique(label[mapped < 0]))
            expected = sorted(classes)
            raise DataError(
                f"holds values {bad[:10]} that are neither classes ({expected[0]}..{expected[-1]}) "
                f"nor void ({sorted(set(void))[:5]})"
            )
        return mapped.astype(np.uint8)

    return apply


def fixed_subset(total: int, count: int) -> list[int]:
    """``count`` of ``range(total)`` in a fixed random order (seed 0): the same images every run."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(0))[:count].tolist()


def list_images(folder: Path) -> list[Path]:
    """The image files in ``folder``; a symbolic link among them that leads to no file (broken, or
    a loop) is a :class:`DataError` naming it, not an image silently missing from its pair."""
    named = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    dead_links = [p for p in named if p.is_symlink() and not p.exists()]
    if dead_links:
        raise DataError(
            f"{len(dead_links)} symbolic link(s) in {folder} lead to no file (broken, or a loop): "
            + ", ".join(p.name for p in dead_links[:5])
        )
    return [p for p in named if p.is_file()]


def pair_by_stem(image_dir: Path, label_dir: Path, label_suffix: str = "", image_suffix: str = "") -> list[Sample]:
    """Pair ``image_dir/<stem><image_suffix>.*`` with ``label_dir/<stem><label_suffix>.*``.

    Raise :class:`DataError` naming the files that have no partner.
    """
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise DataError(f"folder {folder} does not exist")
    images = {p.stem.removesuffix(image_suffix): p for p in list_images(image_dir)}
    labels = {p.stem.removesuffix(label_suffix): p for p in list_images(label_dir)}
    if not images:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    lonely_images = sorted(images.keys() - labels.keys())
    lonely_labels = sorted(labels.keys() - images.keys())
    if lonely_images or lonely_labels:
        problems = [f"image without label: {images[s]}" for s in lonely_images[:5]]
        problems += [f"label without image: {labels[s]}" for s in lonely_labels[:5]]
        raise DataError(f"{len(lonely_images) + len(lonely_labels)} unpaired files: " + "; ".join(problems))
    return [(images[stem], labels[stem]) for stem in sorted(images)]


def free_memory_bytes() -> int:
    """Memory the system has free now (physical pages not in use; no page cache counted)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on every platform: assume plenty
        return 2**62


class SegmentationDataset(Dataset):
    """Image/label pairs, mapped to train ids and transformed by an albumentations pipeline.

    Items are dicts with ``image`` (float CxHxW), ``mask`` (int64 HxW, absent without labels)
    and ``path``.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        num_classes: int,
        ignore_index: int,
        label_map: LabelMap | None = None,
        transform: A.Compose | None = None,
    ) -> None:
        self.samples = list(samples)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.label_map = label_map
        self.transform = transform
        self.decoded: list[tuple[np.ndarray, np.ndarray | None]] | None = None  # see hold_in_memory

    def __len__(self) -> int:
        return len(self.samples)

    def hold_in_memory(self, budget_bytes: int | None = None) -> int:
        """Decode every sample once and keep it, if the decoded set fits in ``budget_bytes``
        (estimated from the first sample); return the bytes held (0: did not fit, nothing held).

        Decoding a PNG costs more than the whole augmentation pipeline; DataLoader workers
        forked afterwards share these arrays instead of decoding again.
        """
        if not self.samples:
            return 0
        first = self.load(0)
        per_sample = sum(a.nbytes for a in first if a is not None)
        if budget_bytes is not None and per_sample * len(self) > budget_bytes:
            return 0
        decoded = [first] + [self.load(index) for index in range(1, len(self))]
        for arrays in decoded:  # an augmentation writing in place would corrupt every later epoch
            for array in arrays:
                if array is not None:
                    array.flags.writeable = False
        self.decoded = decoded
        return sum(a.nbytes for arrays in decoded for a in arrays if a is not None)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The untransformed RGB image and train-id mask of one sample."""
        if self.decoded is not None:
            return self.decoded[index]
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        if label_path is None:
            return image, None
        raw = read_label(label_path)
        if raw.shape[:2] != image.shape[:2]:
            raise DataError(
                f"label {label_path} is {raw.shape[1]}x{raw.shape[0]} but image {image_path} is "
                f"{image.shape[1]}x{image.shape[0]}; they must be the same size"
            )
        try:
            mask = self.label_map(raw) if self.label_map is not None else raw
        except DataError as error:
            raise DataError(f"label {label_path} {error}") from None
        if mask.ndim != 2:
            raise DataError(
                f"label {label_path} has {mask.shape[2]} channels; expected a single-channel class-id image"
            )
        invalid = (mask >= self.num_classes) & (mask != self.ignore_index)
        if invalid.any():
            values = sorted(int(v) for v in np.unique(mask[invalid]))
            raise DataError(
                f"label {label_path} holds values {values[:10]} outside the classes 0..{self.num_classes - 1} "
                f"and not the ignore value {self.ignore_index}"
            )
        return image, mask.astype(np.uint8, copy=False)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        """``key`` is an index, or ``(index, seed)`` to draw this item's augmentation from ``seed``."""
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        if self.transform is not None:
            if seed is not None:
                self.transform.set_random_seed(seed)
            out = self.transform(image=image, mask=mask) if mask is not None else self.transform(image=image)
            image, mask = out["image"], out.get("mask")
        image_tensor, mask_tensor = to_tensors(image.astype(np.float32, copy=False), mask)
        item: dict[str, torch.Tensor | str] = {"image": image_tensor, "path": str(self.samples[index][0])}
        if mask_tensor is not None:
            item["mask"] = mask_tensor
        return item


def hold_out(samples: list[Sample], patterns: Sequence[str], option: str) -> tuple[list[Sample], list[Sample]]:
    """``samples`` split into those whose image name matches none of the shell ``patterns`` and those
    that match one (the dev split); a pattern matching nothing, or every sample held out, is an error
    naming ``option``."""
    names = [image.name for image, _ in samples]
    for pattern in patterns:
        if not fnmatch.filter(names, pattern):
            examples = ", ".join(names[:: max(1, len(names) // 3)][:3])
            raise DataError(
                f"{option}: {pattern!r} matches none of the {len(samples)} training images (named like {examples})"
            )
    held = [any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in names]
    if all(held):
        raise DataError(f"{option} holds out all {len(samples)} training images; nothing is left to train on")
    return [s for s, dev in zip(samples, held) if not dev], [s for s, dev in zip(samples, held) if dev]


def batches_by_size(dataset: SegmentationDataset, indices: Iterable[int], batch_size: int) -> Iterator[torch.Tensor]:
    """The images of ``indices``, whole, stacked in batches of up to ``batch_size`` images of one size; a size
    with a single image is left out (BatchNorm needs two)."""
    pending: dict[tuple[int, ...], list[torch.Tensor]] = {}
    for index in indices:
        image = dataset[index]["image"]
        group = pending.setdefault(tuple(image.shape), [])
        group.append(image)
        if len(group) == batch_size:
            yield torch.stack(pending.pop(tuple(image.shape)))
    for group in pending.values():
        if len(group) > 1:
            yield torch.stack(group)


def evaluation_loader(dataset: SegmentationDataset, batch_size: int, **options) -> DataLoader:
    """Full-size images in batches of one size (no padding); across processes, each image exactly once."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Lightning's default DistributedSampler pads the last shard with repeated images,
        # which would count them twice in the mIoU; this one splits the set exactly.
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **options)
    batches = SameSizeBatches([image for image, _ in dataset.samples], batch_size)
    return DataLoader(dataset, batch_sampler=batches, **options)
