"""Inputs for ``bisenet-pl predict``: a folder of images (any size, RGB, RGBA or grayscale), one
image, or a video file, without labels."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import albumentations as A
import cv2
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from bisenet_pl.data.io import IMAGE_SUFFIXES, native_output_hidden, read_image
from bisenet_pl.data.transforms import to_tensors
from bisenet_pl.errors import DataError, data_problems

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def find_images(source: Path) -> list[Path]:
    """The image files of ``source`` (one image, or a folder searched recursively), sorted."""
    if source.is_file():
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"data.predict_source {source} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video"
            )
        return [source]
    if not source.is_dir():
        raise DataError(f"data.predict_source {source} does not exist")
    found = list(source.rglob("*"))
    images = sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise DataError(f"data.predict_source {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    others = sorted(p for p in found if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES)
    linked_folders = sorted(p for p in found if p.is_symlink() and p.is_dir())
    if others or linked_folders:
        skipped = [f"{len(others)} file(s) that are not images it reads ({', '.join(p.name for p in others[:3])}"
                   f"{', ...' if len(others) > 3 else ''})"] if others else []  # fmt: skip
        if linked_folders:
            skipped.append(
                f"{len(linked_folders)} linked folder(s), not followed ({', '.join(map(str, linked_folders[:3]))})"
            )
        rank_zero_warn(
            f"data.predict_source {source}: predicting {len(images)} images; skipped {' and '.join(skipped)}. "
            f"Images are read from {', '.join(IMAGE_SUFFIXES)} files"
        )
    # Outputs are named after the image without its suffix: a.png and a.jpg would overwrite each other.
    by_name: dict[Path, list[Path]] = {}
    for image in images:
        by_name.setdefault(image.with_suffix(""), []).append(image)
    clashes = [paths for paths in by_name.values() if len(paths) > 1]
    if clashes:
        raise DataError(
            f"data.predict_source {source}: {' and '.join(map(str, clashes[0]))} have the same name apart from the "
            f"suffix, so their outputs would overwrite each other ({len(clashes)} such group(s)); rename or move one"
        )
    return images


class ImageFiles(Dataset):
    """Unlabelled images, normalised; items carry their ``path``."""

    def __init__(self, paths: Sequence[Path], transform: A.Compose) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        """The image, or, for a file that cannot be decoded, a blank of its batch's size with the
        reason in ``error``: one bad file does not stop the images after it (the writer skips it)."""
        path = self.paths[index]
        try:
            image = self.transform(image=read_image(path))["image"]
        except DataError as error:
            width, height = header_size(path) or UNREADABLE_SIZE
            return {"image": torch.zeros(3, height, width), "path": str(path), "error": str(error)}
        tensor, _ = to_tensors(image, None)
        return {"image": tensor, "path": str(path), "error": ""}

    def check_all(self) -> None:
        """Decode every image; raise one :class:`DataError` listing every one that fails."""
        problems = []
        for path in self.paths:
            try:
                read_image(path)
            except DataError as error:
                problems.append(str(error))
        if problems:
            raise data_problems(f"{len(problems)} of the {len(self.paths)} images to predict cannot be read", problems)


#: (width, height) given to files whose header cannot be read: they are batched together.
UNREADABLE_SIZE = (32, 32)


#: EXIF orientations that turn an image by 90 degrees (its width and height swap when shown upright).
QUARTER_TURNS = (5, 6, 7, 8)


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of the image as shown upright (see :func:`~bisenet_pl.data.io.read_image`),
    from the file's header, or None if it cannot be read."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return (height, width) if image.getexif().get(0x0112) in QUARTER_TURNS else (width, height)
    except OSError:
        return None


class SameSizeBatches(Sampler[list[int]]):
    """Batches of images of one size (read from file headers), in file order within each size:
    images of any size are batched without padding, which would change the predictions."""

    def __init__(self, paths: Sequence[Path], batch_size: int) -> None:
        groups: dict[tuple[int, int], list[int]] = {}
        for index, path in enumerate(paths):
            # An unreadable header: batched with the others like it, reported when it is written.
            groups.setdefault(header_size(path) or UNREADABLE_SIZE, []).append(index)
        self.batches = [
            group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class VideoFrames(IterableDataset):
    """The frames of a video, in order, normalised; items carry ``path``, ``frame`` and ``fps``."""

    def __init__(self, path: Path, transform: A.Compose) -> None:
        self.path = Path(path)
        self.transform = transform
        with native_output_hidden():
            capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise DataError(f"cannot open video {self.path}: missing, unreadable or in a format OpenCV cannot decode")
        self.fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if self.frame_count <= 0:  # a header without a count (some streams): a length of 0 predicted nothing
            self.frame_count = 0
            with native_output_hidden():
                while capture.grab():
                    self.frame_count += 1
        capture.release()
        if self.frame_count <= 0:
            raise DataError(f"video {self.path} has no frame OpenCV can decode")

    def __len__(self) -> int:  # for the progress bar; containers may round it
        return max(self.frame_count, 0)

    def __iter__(self) -> Iterator[dict]:
        with native_output_hidden():
            capture = cv2.VideoCapture(str(self.path))
        index = 0
        try:
            while True:
                with native_output_hidden():  # ffmpeg's lines about damaged frames; ours follows
                    ok, frame = capture.read()
                if not ok:
                    break
                image = self.transform(image=cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))["image"]
                tensor, _ = to_tensors(image, None)
                yield {"image": tensor, "path": str(self.path), "frame": index, "fps": float(self.fps)}
                index += 1
        finally:
            capture.release()
        if index < self.frame_count:
            warnings.warn(
                f"video {self.path}: decoded {index} of the {self.frame_count} frames its header announces "
                "(truncated or damaged?); the outputs hold those frames",
                stacklevel=1,
            )


class PredictSource:
    """What ``predict`` reads instead of a split: a folder of images, one image or a video, with
    the evaluation transform; the dataset is found and opened once, on first use."""

    def __init__(self, path: Path, transform: A.Compose, batch_size: int) -> None:
        self.path, self.transform, self.batch_size = path, transform, batch_size
        self._dataset: ImageFiles | VideoFrames | None = None

    @property
    def dataset(self) -> ImageFiles | VideoFrames:
        """The frames or images; a missing or unreadable source fails here, in words."""
        if self._dataset is None:
            if is_video(self.path):
                if not self.path.is_file():
                    raise DataError(f"data.predict_source {self.path} does not exist")
                self._dataset = VideoFrames(self.path, self.transform)
            else:
                self._dataset = ImageFiles(find_images(self.path), self.transform)
        return self._dataset

    def check(self, read_all: bool) -> None:
        """Open the source; with ``read_all``, read every image now (else unreadable images are
        skipped, named, and fail the run at its end)."""
        if read_all and isinstance(self.dataset, ImageFiles):
            self.dataset.check_all()

    def loader(self, **options) -> DataLoader:
        """A DataLoader over the source: images batched by size; video frames in order, decoded by
        one process (a worker, or the main process)."""
        dataset = self.dataset
        if isinstance(dataset, VideoFrames):
            options.update(num_workers=min(1, options.get("num_workers", 0)), persistent_workers=False)
            # Lightning doubts any stream with a length: this one is decoded by one process, so its length is
            # exact, and the writer names frames by number, not by the batch indices a stream cannot give.
            warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
            warnings.filterwarnings("ignore", message="Couldn't infer the batch indices fetched from your dataloader")
            return DataLoader(dataset, batch_size=self.batch_size, collate_fn=collate_predict, **options)
        batches = SameSizeBatches(dataset.paths, self.batch_size)
        # Lightning warns that it cannot check a custom batch sampler returns every index; this one does
        # (each index in exactly one batch: tests/test_predict.py). Set here, not at import, to hold in any run.
        warnings.filterwarnings("ignore", message="You are using a custom batch sampler `SameSizeBatches`")
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate_predict, **options)


def collate_predict(items: list[dict]) -> dict:
    return {
        key: torch.stack([item[key] for item in items]) if key == "image" else [item[key] for item in items]
        for key in items[0]
    }
