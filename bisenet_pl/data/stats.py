"""Dataset statistics: image sizes, class pixel frequencies, mean/std, class weights."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from bisenet_pl.data.dataset import SegmentationDataset


@dataclass
class DatasetStatistics:
    num_images: int
    sizes: Counter  # (height, width) -> count
    class_pixels: np.ndarray  # pixels per class
    class_image_pixels: np.ndarray  # total pixels of the images in which each class appears
    ignored_pixels: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    class_names: list[str] = field(default_factory=list)

    @property
    def class_frequency(self) -> np.ndarray:
        """Share of labelled (non-ignored) pixels per class."""
        return self.class_pixels / max(1, self.class_pixels.sum())

    def median_frequency_weights(self) -> np.ndarray:
        """SegNet's median frequency balancing: median(f) / f_c, with f_c counted over the
        images where class c appears; classes never seen get weight 0."""
        with np.errstate(divide="ignore", invalid="ignore"):
            freq = np.where(self.class_image_pixels > 0, self.class_pixels / self.class_image_pixels, 0.0)
        seen = freq > 0
        weights = np.zeros_like(freq)
        weights[seen] = np.median(freq[seen]) / freq[seen]
        return weights

    def format(self) -> str:
        total = self.class_pixels.sum() + self.ignored_pixels
        sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in self.sizes.most_common(5))
        lines = [
            f"images: {self.num_images}    sizes (WxH): {sizes}",
            f"mean (RGB): [{', '.join(f'{m:.4f}' for m in self.mean)}]    std: "
            f"[{', '.join(f'{s:.4f}' for s in self.std)}]",
            f"ignored pixels: {self.ignored_pixels / max(1, total):.4f}",
            f"{'class':<16}{'share':>8}{'median-freq weight':>20}",
        ]
        for name, share, weight in zip(self.class_names, self.class_frequency, self.median_frequency_weights()):
            lines.append(f"{name:<16}{share:>8.4f}{weight:>20.4f}")
        return "\n".join(lines)


def dataset_statistics(dataset: SegmentationDataset, class_names: list[str] | None = None) -> DatasetStatistics:
    """Scan every image and label of ``dataset`` once (untransformed)."""
    num_classes = dataset.num_classes
    class_pixels = np.zeros(num_classes, dtype=np.int64)
    class_image_pixels = np.zeros(num_classes, dtype=np.int64)
    channel_sum = np.zeros(3)
    channel_sq_sum = np.zeros(3)
    sizes: Counter = Counter()
    ignored = 0
    pixels = 0
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        sizes[image.shape[:2]] += 1
        flat = image.reshape(-1, 3).astype(np.float64) / 255.0
        channel_sum += flat.sum(0)
        channel_sq_sum += (flat**2).sum(0)
        pixels += flat.shape[0]
        if mask is not None:
            counts = np.bincount(mask.ravel(), minlength=256)
            class_pixels += counts[:num_classes]
            class_image_pixels += np.where(counts[:num_classes] > 0, mask.size, 0)
            ignored += int(counts[dataset.ignore_index])
    mean = channel_sum / max(1, pixels)
    std = np.sqrt(np.maximum(channel_sq_sum / max(1, pixels) - mean**2, 0))
    return DatasetStatistics(
        num_images=len(dataset),
        sizes=sizes,
        class_pixels=class_pixels,
        class_image_pixels=class_image_pixels,
        ignored_pixels=ignored,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        class_names=list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)],
    )
