"""A training DataLoader that resumes mid-epoch exactly.

The order of an epoch and every image's augmentation depend only on (seed, epoch, position),
never on random state that a restart loses. Lightning saves the loader's ``state_dict`` in each
checkpoint and loads it on resume; the loader then skips the batches already trained on,
without reading them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from bisenet_pl.compat import batches_done


class SeededShuffleSampler(DistributedSampler):
    """Shuffles with ``seed + epoch`` (sharded across processes under DDP) and yields
    ``(index, augmentation_seed)`` pairs, the seed derived from (seed, epoch, index).

    It is a DistributedSampler so that Lightning keeps it under DDP instead of replacing it.
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        replicas = {} if distributed else {"num_replicas": 1, "rank": 0}
        super().__init__(dataset, shuffle=True, seed=seed, drop_last=True, **replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for index in super().__iter__():
            entropy = np.random.SeedSequence([self.seed, self.epoch, index])
            yield index, int(entropy.generate_state(1)[0])


class SkippingBatchSampler(BatchSampler):
    """A BatchSampler whose next pass leaves out its first ``skip`` batches."""

    skip = 0

    def __iter__(self):
        skip, self.skip = self.skip, 0
        for number, batch in enumerate(super().__iter__()):
            if number >= skip:
                yield batch


class ResumableDataLoader(DataLoader):
    """A DataLoader with the ``state_dict``/``load_state_dict`` pair Lightning saves and restores.

    ``progress`` returns how many batches of the current epoch have been trained on (the
    DataModule reads it from the trainer: the loader itself runs ahead by its prefetching).
    """

    progress: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, int]:
        sampler = self.batch_sampler.sampler
        done = self.progress() if self.progress is not None else 0
        return {"epoch": sampler.epoch, "batches_done": done, "images": len(self.dataset)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        epoch, done = state["epoch"], state["batches_done"]
        saved = state.get("images", len(self.dataset))  # checkpoints before this key: not known
        if saved != len(self.dataset):
            rank_zero_warn(
                f"the training split had {saved} images when the checkpoint was saved and has {len(self.dataset)} "
                f"now: resuming at epoch {epoch}, batch {done}, of a different order than the run would have had"
            )
        if done >= len(self):  # saved at the end of an epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        self.batch_sampler.sampler.set_epoch(epoch)
        self.batch_sampler.skip = done


def resumable_train_loader(
    dataset: Dataset, batch_size: int, trainer: Any | None = None, **options
) -> ResumableDataLoader:
    """The training DataLoader: shuffled and augmented from (seed, epoch, position) only, and
    ``drop_last`` (a last batch of one would break BatchNorm on pooled maps). Its progress within
    an epoch is what ``trainer`` has trained on; this is where the loader reads Lightning's loop."""
    sampler = SeededShuffleSampler(dataset, seed=torch.initial_seed() % 2**31)
    batches = SkippingBatchSampler(sampler, batch_size, drop_last=True)
    loader = ResumableDataLoader(dataset, batch_sampler=batches, **options)
    if trainer is not None:
        loader.progress = batches_done(trainer)
    return loader
