"""The DataModule base class every dataset shares: its options, splits (dev held out of training) and loaders."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from bisenet_pl.data.dataset import (
    LabelMap,
    Sample,
    SegmentationDataset,
    batches_by_size,
    evaluation_loader,
    fixed_subset,
    free_memory_bytes,
    hold_out,
)
from bisenet_pl.data.options import check_data_options
from bisenet_pl.data.predict import PredictSource
from bisenet_pl.data.resume import resumable_train_loader
from bisenet_pl.data.scan import scan_splits
from bisenet_pl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    seed_worker_transforms,
    train_transform,
)
from bisenet_pl.errors import ConfigError, DataError


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
        check_files: read every image and label of the splits in use before starting, and report
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
        validate: the former name of ``check_files`` (``true`` is taken as it, with a warning).

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
        check_files: bool = False,
        predict_source: str | None = None,
        cache_images: bool = False,
        dev_files: list[str] | None = None,
        train_splits: list[str] = ("train",),
        validate: bool | None = None,
    ) -> None:
        super().__init__()
        if validate:  # its former name; saved configs hold validate: false, which changes nothing
            rank_zero_warn(
                "data.validate is now data.check_files (the old name was also a subcommand's): taken as "
                "--data.check_files=true"
            )
            check_files = True
        train_splits = list(train_splits)
        check_data_options(locals())
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
        self.check_files = check_files
        self.predict_source = Path(predict_source).expanduser() if predict_source else None
        self.cache_images = cache_images
        self.dev_files = list(dev_files) if dev_files else []
        self.train_splits = train_splits
        self._scanned: set[str] = set()  # splits check_data already read through (check_files)
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
        if split == "dev" and not self.dev_files:
            raise DataError("there is no dev split: choose its training images with data.dev_files (name patterns)")
        if not self.dev_files:
            return train
        training, dev = hold_out(train, self.dev_files, self.dev_option())
        return dev if split == "dev" else training

    def dataset(self, split: str, train: bool = False) -> SegmentationDataset:
        """A dataset of ``split`` with the training or the evaluation pipeline."""
        augmentation = (self.crop_size, self.scale_range, self.ignore_index, self.mean, self.std, self.hflip)
        augmentation += (self.color_jitter, self.blur, self.noise)
        transform = train_transform(*augmentation) if train else eval_transform(self.mean, self.std)
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
        with ``check_files`` every image and label."""
        if stage == "predict" and self.predict_source is not None:
            self.predict_reader().check(read_all=self.check_files)  # before any folder is made
        if self.check_files:
            self.check_splits(self.stage_splits(stage))
        else:
            for split in self.stage_splits(stage):
                self.split_samples(split)

    def setup(self, stage: str | None = None) -> None:
        if self.check_files:
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
        return batches_by_size(train, fixed_subset(len(train), count), batch_size)

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
        return evaluation_loader(self.datasets[split], batch_size, **self._loader_options())

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
