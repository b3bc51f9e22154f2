"""The dataset and the DataModule base class every dataset shares."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from bisenet_pl.data.io import IMAGE_SUFFIXES, read_image, read_label
from bisenet_pl.data.predict import PredictSource, SameSizeBatches
from bisenet_pl.data.resume import resumable_train_loader
from bisenet_pl.data.scan import scan_splits
from bisenet_pl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    seed_worker_transforms,
    to_tensors,
    train_transform,
)
from bisenet_pl.errors import ConfigError, DataError, check_options

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
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


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


class SegmentationDataModule(L.LightningDataModule):
    """Options every dataset shares, and the DataLoaders.

    Args:
        root: dataset folder.
        batch_size: training images per step (per device).
        num_workers: DataLoader worker processes.
        crop_size: training crop ``[height, width]``.
        scale_range: random rescale range for training, e.g. ``[0.5, 2.0]``.
        ignore_index: train id of ignored pixels (void), in losses and metrics.
        val_batch_size: images per validation/test step (full resolution).
        mean: per-channel RGB mean in [0, 1] for normalisation.
        std: per-channel RGB std in [0, 1].
        hflip: probability of a horizontal flip in training.
        color_jitter: brightness/contrast/saturation jitter strength (0 disables it).
        blur: probability of a Gaussian blur of a training crop (sigma 0.5-1.5 pixels; 0: never).
        noise: Gaussian noise on half the training crops, standard deviation up to this share of
            the pixel range (0: none).
        pin_memory: pin host memory for faster GPU transfer.
        test_split: the split ``test`` and ``predict`` use (e.g. ``val`` where test labels are withheld).
        validate: read every image and label of the splits in use before starting, and report
            every problem found at once.
        predict_source: what ``predict`` reads instead of ``test_split``: a folder of images
            (searched recursively; any size, RGB, RGBA or grayscale), one image, or a video file.
        cache_images: hold the decoded training and validation images in memory when they fit in
            half of the free memory (CamVid's 367 train and 101 val images: about 310 MB) instead of
            decoding every image every epoch. Worth it where decoding competes with training for few
            CPU cores.
        dev_files: file-name patterns (shell-style, e.g. ``"0006R0_*"``) of training images held out
            of training as the ``dev`` split: validated beside ``val`` and logged as ``dev/...``.
            Hold out whole sequences or places, so that dev measures what a test split of unseen
            scenes does; images of a sequence that stays in training are near-copies of its others.
        train_splits: the splits training reads, e.g. ``[train, val]`` for the final run of a release
            once its recipe and length are fixed on a dev split (the papers' train + val). Validation
            still scores ``val`` then, as a check of fit, not of generalisation.

    Subclasses set ``num_classes``, ``class_names``, ``palette`` and implement ``samples``.
    """

    num_classes: int
    class_names: list[str]
    palette: list[tuple[int, int, int]]

    def __init__(
        self,
        root: str,
        batch_size: int = 8,
        num_workers: int = 4,
        crop_size: tuple[int, int] = (512, 1024),
        scale_range: tuple[float, float] = (0.5, 2.0),
        ignore_index: int = 255,
        val_batch_size: int = 1,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        blur: float = 0.0,
        noise: float = 0.0,
        pin_memory: bool = True,
        test_split: str = "test",
        validate: bool = False,
        predict_source: str | None = None,
        cache_images: bool = False,
        dev_files: list[str] | None = None,
        train_splits: list[str] = ("train",),
    ) -> None:
        super().__init__()
        train_splits = list(train_splits)
        check_options(
            "data",
            crop_size=(list(crop_size), "[height, width], each >= 32", len(crop_size) == 2 and min(crop_size) >= 32),
            scale_range=(
                list(scale_range),
                "[low, high] with 0 < low <= high",
                len(scale_range) == 2 and 0 < scale_range[0] <= scale_range[1],
            ),
            ignore_index=(ignore_index, "in 0..255 (masks are 8-bit)", 0 <= ignore_index <= 255),
            batch_size=(
                batch_size,
                ">= 2 for training: BiSeNet's BatchNorm on pooled 1x1 context maps needs at least 2 images per step",
                batch_size >= 2,
            ),
            num_workers=(num_workers, ">= 0", num_workers >= 0),
            val_batch_size=(val_batch_size, ">= 1", val_batch_size >= 1),
            mean=(list(mean), "3 numbers (RGB)", len(mean) == 3),
            std=(list(std), "3 numbers (RGB), each > 0", len(std) == 3 and min(std) > 0),
            hflip=(hflip, "a probability in [0, 1]", 0 <= hflip <= 1),
            color_jitter=(color_jitter, "in [0, 1]", 0 <= color_jitter <= 1),
            blur=(blur, "a probability in [0, 1]", 0 <= blur <= 1),
            noise=(noise, "a share of the pixel range in [0, 1]", 0 <= noise <= 1),
            train_splits=(
                train_splits,
                "a list of distinct splits that includes train, e.g. [train, val]",
                "train" in train_splits and len(set(train_splits)) == len(train_splits) and "dev" not in train_splits,
            ),
        )
        if test_split in train_splits:
            raise ConfigError(
                f"data.train_splits={train_splits} includes data.test_split={test_split}: "
                "the model would be tested on images it trained on"
            )
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.crop_size = tuple(crop_size)
        self.scale_range = tuple(scale_range)
        self.ignore_index = ignore_index
        self.val_batch_size = val_batch_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.blur = blur
        self.noise = noise
        self.pin_memory = pin_memory
        self.test_split = test_split
        self.validate = validate
        self.predict_source = Path(predict_source).expanduser() if predict_source else None
        self.cache_images = cache_images
        self.dev_files = list(dev_files) if dev_files else []
        self.train_splits = train_splits
        self._scanned: set[str] = set()  # splits check_data already read through (validate)
        self._predict_source: PredictSource | None = None
        self.datasets: dict[str, SegmentationDataset] = {}

    # Dataset-specific parts.
    def samples(self, split: str) -> list[Sample]:
        """Image/label path pairs of ``split`` (``train``, ``val``, ``test``)."""
        raise NotImplementedError

    def label_map(self) -> LabelMap | None:
        """How stored label values become train ids (``None``: stored as train ids already)."""
        return None

    def dev_option(self) -> str:
        """The option that chose the dev split, as the user wrote it (for messages)."""
        return f"data.dev_files={self.dev_files}"

    # Shared machinery.
    @property
    def val_splits(self) -> list[str]:
        """The splits every validation scores, in the order of the validation loaders."""
        return ["val", "dev"] if self.dev_files else ["val"]

    def split_samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` as training and validation read them: ``train`` is every split
        of ``train_splits`` without the files that match ``dev_files``, ``dev`` those files; other
        splits as :meth:`samples` gives them."""
        if split not in ("train", "dev"):
            return self.samples(split)
        train = [sample for name in self.train_splits for sample in self.samples(name)]
        if not self.dev_files:
            if split == "dev":
                raise DataError(
                    "there is no dev split: choose its training images with data.dev_files (file-name patterns)"
                )
            return train
        names = [image.name for image, _ in train]
        for pattern in self.dev_files:
            if not fnmatch.filter(names, pattern):
                examples = ", ".join(names[:: max(1, len(names) // 3)][:3])
                raise DataError(
                    f"{self.dev_option()}: {pattern!r} matches none of the {len(train)} training images "
                    f"(named like {examples})"
                )
        held = [any(fnmatch.fnmatch(name, pattern) for pattern in self.dev_files) for name in names]
        if all(held):
            raise DataError(
                f"{self.dev_option()} holds out all {len(train)} training images; nothing is left to train on"
            )
        return [sample for sample, dev in zip(train, held) if dev == (split == "dev")]

    def dataset(self, split: str, train: bool = False) -> SegmentationDataset:
        """A dataset of ``split`` with the training or the evaluation pipeline."""
        transform = (
            train_transform(
                self.crop_size,
                self.scale_range,
                self.ignore_index,
                self.mean,
                self.std,
                self.hflip,
                self.color_jitter,
                self.blur,
                self.noise,
            )
            if train
            else eval_transform(self.mean, self.std)
        )
        return SegmentationDataset(
            self.split_samples(split), self.num_classes, self.ignore_index, self.label_map(), transform
        )

    def stage_splits(self, stage: str | None) -> list[str]:
        """The splits a trainer stage reads."""
        if stage == "predict" and self.predict_source is not None:
            return []
        return {"validate": self.val_splits, "test": [self.test_split], "predict": [self.test_split]}.get(
            stage, ["train", *self.val_splits]
        )

    def check_data(self, stage: str | None) -> None:
        """Fail early, before anything is written: folders and pairing of the stage's splits, and
        with ``validate`` every image and label."""
        if stage == "predict" and self.predict_source is not None:
            self.predict_reader().check(read_all=self.validate)  # before any folder is made
        if self.validate:
            self.check_splits(self.stage_splits(stage))
        else:
            for split in self.stage_splits(stage):
                self.split_samples(split)

    def setup(self, stage: str | None = None) -> None:
        if self.validate:
            self.check_splits([split for split in self.stage_splits(stage) if split not in self._scanned])
        if stage in ("fit", None):
            self.datasets["train"] = self.dataset("train", train=True)
            if "val" in self.train_splits:
                rank_zero_warn(
                    f"data.train_splits={self.train_splits}: val is trained on, so its scores measure fit, not "
                    f"generalisation"
                )
        if stage in ("fit", "validate", None):
            for split in self.val_splits:
                self.datasets[split] = self.dataset(split)
        if self.cache_images and stage in ("fit", "validate", None):
            for split in ("train", *self.val_splits):
                if split in self.datasets and self.datasets[split].decoded is None:
                    self._hold_in_memory(split)
        if stage == "predict" and self.predict_source is not None:
            self.datasets["predict"] = self.predict_reader().dataset
        elif stage in ("test", "predict"):
            self.datasets[stage] = self.dataset(self.test_split)

    def _hold_in_memory(self, split: str) -> None:
        held = self.datasets[split].hold_in_memory(budget_bytes=free_memory_bytes() // 2)
        if held:
            rank_zero_info(
                f"Holding the {len(self.datasets[split])} decoded {split} images in memory ({held / 2**20:.0f} MB)"
            )
        else:
            rank_zero_warn(
                f"data.cache_images: the decoded {split} images do not fit in half the free memory; decoding each epoch"
            )

    def full_size_batches(self, count: int, batch_size: int) -> Iterator[torch.Tensor]:
        """``count`` training images (a fixed random subset), whole and unaugmented, stacked in
        batches of up to ``batch_size`` images of one size: what BatchNorm statistics for full-size
        evaluation are computed on. A size with a single image is left out (BatchNorm needs two)."""
        train = self.dataset("train")
        held = self.datasets.get("train")
        if held is not None and held.decoded is not None:
            train.decoded = held.decoded  # the same images, decoded already
        pending: dict[tuple[int, ...], list[torch.Tensor]] = {}
        for index in fixed_subset(len(train), count):
            image = train[index]["image"]
            group = pending.setdefault(tuple(image.shape), [])
            group.append(image)
            if len(group) == batch_size:
                yield torch.stack(pending.pop(tuple(image.shape)))
        for group in pending.values():
            if len(group) > 1:
                yield torch.stack(group)

    def predict_reader(self) -> PredictSource:
        """The reader of ``predict_source`` (built once)."""
        if self._predict_source is None:
            self._predict_source = PredictSource(
                self.predict_source, eval_transform(self.mean, self.std), self.val_batch_size
            )
        return self._predict_source

    def check_splits(self, splits: Sequence[str]) -> None:
        """Read every sample of ``splits`` now (see :func:`~bisenet_pl.data.scan.scan_splits`)."""
        scan_splits(splits, self.dataset, self.root)
        self._scanned.update(splits)

    def _loader_options(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
            "worker_init_fn": seed_worker_transforms,
            # Its own generator: creating an iterator draws from it, not from the global RNG.
            "generator": torch.Generator().manual_seed(torch.initial_seed()),
        }

    def _loader(self, split: str, batch_size: int) -> DataLoader:
        dataset = self.datasets[split]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning's default DistributedSampler pads the last shard with repeated images,
            # which would count them twice in the mIoU; this one splits the set exactly.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
            return DataLoader(dataset, batch_size=batch_size, sampler=sampler, **self._loader_options())
        # Images of different sizes go to different batches (full resolution, no padding).
        batches = SameSizeBatches([image for image, _ in dataset.samples], batch_size)
        return DataLoader(dataset, batch_sampler=batches, **self._loader_options())

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        if len(dataset) < self.batch_size:
            raise DataError(
                f"the training split of {self.root} has {len(dataset)} images, fewer than "
                f"data.batch_size={self.batch_size}"
            )
        # Resumes mid-epoch exactly (see bisenet_pl.data.resume).
        return resumable_train_loader(dataset, self.batch_size, self.trainer, **self._loader_options())

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        loaders = [self._loader(split, self.val_batch_size) for split in self.val_splits]
        return loaders[0] if len(loaders) == 1 else loaders

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_source is None:
            return self._loader("predict", self.val_batch_size)
        return self.predict_reader().loader(**self._loader_options())
