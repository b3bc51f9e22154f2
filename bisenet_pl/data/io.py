"""Reading images and labels from disk, and writing images."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from bisenet_pl.errors import DataError
from bisenet_pl.files import atomic_write

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@contextmanager
def native_output_hidden() -> Iterator[None]:
    """Hide what C libraries print on the process's stderr meanwhile (libpng, libjpeg, ffmpeg and
    OpenCV's own log, about a file they cannot decode): our error naming the file says it once."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to borrow
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def decode(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray | None:
    """``cv2.imread(path, flags)`` without the decoders' own messages."""
    with native_output_hidden():
        return cv2.imread(str(path), flags)


def read_image(path: Path) -> np.ndarray:
    """Read an image as RGB uint8 HxWx3 (grayscale is repeated, an alpha channel dropped), turned
    upright as image viewers show it (a camera's EXIF orientation applied), so that a mask made
    from it fits the image a person sees."""
    image = decode(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)  # IMREAD_COLOR applies the EXIF orientation
    if image is None:
        raise DataError(f"cannot read image {path}: missing, unreadable or not an image")
    if image.dtype != np.uint8:
        raise DataError(f"image {path} has dtype {image.dtype}; expected 8-bit images")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """Read a label image as stored: HxW class ids, or HxWx3 RGB for colour-coded labels."""
    label = decode(path)
    if label is None:
        raise DataError(f"cannot read label {path}: missing, unreadable or not an image")
    if label.ndim == 3:
        return cv2.cvtColor(label[..., :3], cv2.COLOR_BGR2RGB)
    return label


def write_image(path: Path, image: np.ndarray) -> None:
    """Write RGB (HxWx3) or single-channel uint8 ``image``, encoded by ``path``'s suffix."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"cannot encode {path}")
    with atomic_write(path) as partial:
        partial.write_bytes(encoded.tobytes())
