"""Reading images and labels from disk, and writing files so that none is ever half-written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from bisenet_pl.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: Path) -> np.ndarray:
    """Read an image as RGB uint8 HxWx3 (grayscale and RGBA are converted)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"cannot read image {path}: missing, unreadable or not an image")
    if image.dtype != np.uint8:
        raise DataError(f"image {path} has dtype {image.dtype}; expected 8-bit images")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """Read a label image as stored: HxW class ids, or HxWx3 RGB for colour-coded labels."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise DataError(f"cannot read label {path}: missing, unreadable or not an image")
    if label.ndim == 3:
        return cv2.cvtColor(label[..., :3], cv2.COLOR_BGR2RGB)
    return label


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` only when the block
    succeeds and is removed when it fails, so a crash never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def check_writable(folder: str | Path, option: str) -> None:
    """Fail before any work unless ``folder`` can be created and written: its nearest existing
    ancestor must be a folder in which a file can be made (tried, then removed at once)."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"{option} {folder}: cannot write in {existing} ({error.strerror or error})") from None


def write_image(path: Path, image: np.ndarray) -> None:
    """Write RGB (HxWx3) or single-channel uint8 ``image``, encoded by ``path``'s suffix."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(path.suffix, image)
    if not ok:
        raise OSError(f"cannot encode {path}")
    with atomic_write(path) as partial:
        partial.write_bytes(encoded.tobytes())
