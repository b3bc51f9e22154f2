"""Albumentations pipelines: the reference's training recipe and full-resolution evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

# ImageNet statistics in RGB order, the reference's normalisation for every dataset.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(
    crop_size: Sequence[int],
    scale_range: Sequence[float],
    ignore_index: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    hflip: float = 0.5,
    color_jitter: float = 0.4,
    blur: float = 0.0,
    noise: float = 0.0,
) -> A.Compose:
    """Random rescale, pad (image 0, label ``ignore_index``), random crop, flip, colour jitter, and
    optionally a Gaussian blur (with probability ``blur``, sigma 0.5-1.5 pixels) and Gaussian noise
    (on half the images, standard deviation up to ``noise`` of the pixel range): what a camera's focus
    and sensor change between sequences.

    Masks are resized with nearest neighbour and padded with the ignore value, so they
    only ever hold real classes and ``ignore_index``.
    """
    height, width = crop_size
    low, high = scale_range
    transforms: list[A.BasicTransform] = [
        A.RandomScale(
            scale_limit=(low - 1.0, high - 1.0),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            p=1.0,
        ),
        A.PadIfNeeded(
            min_height=height, min_width=width, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore_index
        ),
        A.RandomCrop(height=height, width=width),
        A.HorizontalFlip(p=hflip),
    ]
    if color_jitter > 0:
        jitter = (max(0.0, 1 - color_jitter), 1 + color_jitter)
        transforms.append(A.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=0.0, p=1.0))
    if blur > 0:
        transforms.append(A.GaussianBlur(blur_limit=0, sigma_limit=(0.5, 1.5), p=blur))
    if noise > 0:
        transforms.append(A.GaussNoise(std_range=(0.0, noise), per_channel=True, p=0.5))
    transforms.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    return A.Compose(transforms)


def eval_transform(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Full resolution, normalisation only: the networks take any size."""
    return A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0)])


def to_tensors(image: np.ndarray, mask: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """HWC float image -> CHW tensor; HW mask -> int64 tensor."""
    image_tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    mask_tensor = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64))
    return image_tensor, mask_tensor


def seed_worker_transforms(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: give each worker's albumentations pipeline its own seed.

    Albumentations keeps its own random generators; forked workers would otherwise share
    one state and repeat each other's augmentations. ``torch.initial_seed()`` differs per
    worker and per epoch (and follows ``seed_everything``), so runs stay reproducible.
    """
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    transform = getattr(info.dataset, "transform", None)
    if isinstance(transform, A.Compose):
        transform.set_random_seed(seed)
