"""What a deployed variant scores: mIoU (torchmetrics, as in validation) of any image-to-class-ids
function on labelled images, so that fp32, bf16 and int8 files are compared on the same pixels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex

from bisenet_pl.deploy.network import ImageInput, deployable
from bisenet_pl.deploy.quantize import model_input
from bisenet_pl.deploy.runtime import Predictor

#: A lower-precision variant that loses more than this many mIoU points against fp32 is flagged.
MIOU_TOLERANCE = 1.0
#: Class ids of one RGB uint8 HxWx3 image, HxW.
Segmenter = Callable[[np.ndarray], np.ndarray]


def predictor_segmenter(
    predictor: Predictor, image_input: ImageInput, labels_in_graph: bool, mean: Sequence[float], std: Sequence[float]
) -> Segmenter:
    """An exported file's predictions for one image (the argmax taken here if the file gives logits)."""

    def segment(image: np.ndarray) -> np.ndarray:
        output = predictor(model_input(image, image_input, mean, std))
        return output[0] if labels_in_graph else output[0].argmax(axis=0)

    return segment


def pytorch_segmenter(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> Segmenter:
    """The PyTorch network's fp32 predictions from 8-bit images, the baseline of every variant."""
    model = deployable(net, labels="int64", image_input="uint8_nhwc", mean=mean, std=std)

    def segment(image: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(np.ascontiguousarray(image[None])))[0].numpy()

    return segment


def mean_iou(
    segmenters: dict[str, Segmenter],
    samples: Iterable[tuple[np.ndarray, np.ndarray]],
    num_classes: int,
    ignore_index: int,
) -> dict[str, float]:
    """mIoU (0-100) of each segmenter over ``samples`` (RGB image, HxW mask) in one pass over them."""
    metrics = {
        name: MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index) for name in segmenters
    }
    seen = 0
    for image, mask in samples:
        target = torch.from_numpy(mask.astype(np.int64))[None]
        for name, segment in segmenters.items():
            metrics[name].update(torch.from_numpy(np.asarray(segment(image), dtype=np.int64))[None], target)
        seen += 1
    if not seen:
        raise ValueError("scoring needs at least one labelled image; got none")
    return {name: 100 * metric.compute().item() for name, metric in metrics.items()}
