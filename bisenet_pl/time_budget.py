"""``--train_minutes``: a schedule sized to a time budget from measured steps, validations included.

The number of steps is what fits in the minutes once the three validations are paid for: each a forward
pass of every validation (and dev) image and of the images that recalibrate BatchNorm, at the size of the
validation images, timed like the training step (see :mod:`bisenet_pl.precision`, cached alike). On an
AVX2-only CPU the three validations of ``make demo`` took a third of its ten minutes, more than the fifth
once kept for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bisenet_pl.data.predict import header_size
from bisenet_pl.precision import PrecisionChoice, fastest_cpu_precision

#: Share of the budget kept for data, logging and checkpoints (validations are measured).
TIME_RESERVE = 0.1
#: Validations of a run sized by minutes: at thirds of it, the last on its last step.
VALIDATIONS = 3


@dataclass(frozen=True)
class ValidationCost:
    images: int  # validation (and dev) images
    size: tuple[int, int]  # the first validation image's height and width
    ms_per_image: float
    recalibration_images: int = 0  # training images that recompute BatchNorm's statistics first

    @property
    def ms(self) -> float:
        return (self.images + self.recalibration_images) * self.ms_per_image

    def describe(self) -> str:
        counted = f"{self.images} images"
        if self.recalibration_images:
            counted += f" and {self.recalibration_images} for BatchNorm"
        return (
            f"a validation about {self.ms / 1000:.0f} s ({counted}, {self.size[0]}x{self.size[1]} "
            f"at {self.ms_per_image:.0f} ms)"
        )


def evaluation_size(datamodule, splits: list[str]) -> tuple[int, int]:
    """Height and width of the first image of ``splits`` (the crop size without one)."""
    samples = [sample for split in splits for sample in datamodule.split_samples(split)]
    width_height = header_size(Path(samples[0][0])) if samples else None
    return (width_height[1], width_height[0]) if width_height else tuple(datamodule.crop_size)


def validation_size(datamodule) -> tuple[int, int]:
    """Height and width of the first validation image (the crop size without one)."""
    return evaluation_size(datamodule, datamodule.val_splits)


def validation_choice(module, datamodule, precision: str, size: tuple[int, int] | None = None) -> PrecisionChoice:
    """The memory format a validation's forward passes measure fastest in, in ``precision``, at the evaluation
    batch and ``size`` (:func:`validation_size` unless given), among those ``module.channels_last`` allows (see
    :func:`~bisenet_pl.precision.fastest_cpu_precision`)."""
    size = size or validation_size(datamodule)
    return fastest_cpu_precision(module, datamodule.val_batch_size, size, train=False, candidates=(precision,))


def validation_cost(module, datamodule, precision: str, recalibration_images: int = 0) -> ValidationCost:
    """The time of one validation of ``datamodule``'s validation splits (and BatchNorm recalibration on
    ``recalibration_images`` training images) in ``precision``, in the memory format it measures fastest in
    (:func:`validation_choice`), from a measured forward pass at the evaluation batch."""
    size = validation_size(datamodule)
    choice = validation_choice(module, datamodule, precision, size)
    images = sum(len(datamodule.split_samples(split)) for split in datamodule.val_splits)
    recalibrated = min(recalibration_images, len(datamodule.split_samples("train")))  # at most every training image
    per_image = choice.step_ms[choice.chosen] / datamodule.val_batch_size
    return ValidationCost(images, size, per_image, recalibrated)


def steps_within(minutes: float, step_ms: float, reserve: float = TIME_RESERVE, other_ms: float = 0.0) -> int:
    """Training steps of ``step_ms`` each that fit in ``minutes`` after ``other_ms`` (e.g. the validations),
    with ``reserve`` of the time kept aside; at least one."""
    return max(1, int((minutes * 60_000 * (1 - reserve) - other_ms) / step_ms))
