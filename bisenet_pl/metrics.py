"""The evaluation metrics (torchmetrics): mIoU, per-class IoU, pixel accuracy and the confusion matrix,
and the scalars an epoch of them logs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MulticlassJaccardIndex


def segmentation_metrics(num_classes: int, ignore_index: int) -> MetricCollection:
    return MetricCollection(
        {
            "mIoU": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
            "IoU": MulticlassJaccardIndex(num_classes, average="none", ignore_index=ignore_index),
            "pixel_accuracy": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
            "confusion_matrix": MulticlassConfusionMatrix(num_classes, ignore_index=ignore_index),
        }
    )


def epoch_results(
    metrics: MetricCollection, stage: str, class_names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The epoch's scalars (``{stage}/mIoU``, ``{stage}/pixel_accuracy``, ``{stage}/IoU/<class>``) and its
    confusion matrix (rows: target, columns: prediction); the metrics are reset for the next epoch."""
    results = metrics.compute()
    metrics.reset()
    confusion = results.pop(f"{stage}/confusion_matrix").cpu()
    per_class = results.pop(f"{stage}/IoU")
    scalars = dict(results) | {f"{stage}/IoU/{name}": iou for name, iou in zip(class_names, per_class)}
    return scalars, confusion
