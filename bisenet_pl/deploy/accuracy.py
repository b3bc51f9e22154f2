"""What a deployed variant scores: mIoU (torchmetrics, as in validation) of any image-to-class-ids
function on labelled images, so that fp32, bf16 and int8 files are compared on the same pixels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassJaccardIndex

from bisenet_pl.deploy.export import save_openvino
from bisenet_pl.deploy.network import ImageInput, deployable
from bisenet_pl.deploy.quantize import model_input
from bisenet_pl.deploy.runtime import (
    PRECISION_RT_INFO,
    Predictor,
    fastest_openvino_precision,
    load_predictor,
    openvino_core,
)

if TYPE_CHECKING:
    from bisenet_pl.data import SegmentationDataModule

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


def score_export(
    net: torch.nn.Module, path: Path, options, datamodule: SegmentationDataModule, precision: str | None = None
) -> tuple[str, float]:
    """One line saying the val mIoU of the exported file (in ``precision``, default the file's own)
    and of the PyTorch network in fp32, and the mIoU lost."""
    datamodule.prepare_data()
    val = datamodule.dataset("val")
    segmenters = {
        "file": predictor_segmenter(
            load_predictor(path, precision=precision),
            options.image_input,
            bool(options.labels),
            options.mean,
            options.std,
        ),
        "pytorch": pytorch_segmenter(net, options.mean, options.std),
    }
    scores = mean_iou(
        segmenters, (val.load(i) for i in range(len(val))), datamodule.num_classes, datamodule.ignore_index
    )
    loss = scores["pytorch"] - scores["file"]
    flag = f" (more than {MIOU_TOLERANCE} lost: check the calibration)" if loss > MIOU_TOLERANCE else ""
    return (
        f"val mIoU on {len(val)} images: the file {scores['file']:.2f}, PyTorch fp32 {scores['pytorch']:.2f}, "
        f"{loss:+.2f} lost{flag}",
        loss,
    )


def choose_openvino_precision(
    net: torch.nn.Module, path: Path, options, datamodule: SegmentationDataModule | None
) -> None:
    """``export --precision auto``: time the written file in fp32 and bf16 at its example size, keep
    the faster (bf16 only if it loses at most 1.0 val mIoU when there is data to score on), and
    record the choice in the file for ``load_predictor``."""
    choice = fastest_openvino_precision(path, size=options.example_size)
    print(choice.describe())
    precision = choice.precision
    if datamodule is not None:
        line, loss = score_export(net, path, options, datamodule, precision)
        print(f"{precision}: {line}")
        if precision != "fp32" and loss > MIOU_TOLERANCE:
            precision = "fp32"
            print(f"{choice.precision} loses more than {MIOU_TOLERANCE} mIoU: keeping fp32")
    model = openvino_core().read_model(str(path))
    model.set_rt_info(precision, PRECISION_RT_INFO)
    save_openvino(model, path)
    print(f"{path} runs in {precision} when loaded (load_predictor reads it from the file)")
