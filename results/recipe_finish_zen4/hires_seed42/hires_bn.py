"""A one-off check (2026-12-03, AMD Zen 4, torch 2.13.0; output in hires_bn_output.txt): the finish at the
paper's resolution (frames upscaled 1.5-2.5x, this folder's run) scored on dev at 2x with its BatchNorm
statistics recomputed on 64 training images upscaled 2x, since fit recalibrates them on images at 1x.

    bisenet-pl export --ckpt_path .../hires_seed42/.../last.ckpt --format weights --output hires_seed42.pt
    python results/recipe_finish_zen4/hires_seed42/hires_bn.py hires_seed42.pt ../shared/camvid
"""

import sys

import torch
import torch.nn.functional as F

from bisenet_pl.batchnorm import recalibrate_batchnorm
from bisenet_pl.data import CamVidDataModule
from bisenet_pl.evaluation import EvaluationProtocol, class_scores
from bisenet_pl.metrics import segmentation_metrics
from bisenet_pl.module import SegmentationModule

path, root = sys.argv[1], sys.argv[2]
model = SegmentationModule.from_pretrained(path)
net = model.net.eval()
datamodule = CamVidDataModule(root=root, dev_sequences=["0006R0"], num_workers=0)


def miou(scale: float) -> float:
    protocol = EvaluationProtocol(mode="ss", scales=(scale,))
    metric = segmentation_metrics(model.num_classes, model.ignore_index)["mIoU"]
    with torch.no_grad():
        for item in datamodule.dataset("dev"):
            metric.update(class_scores(net, item["image"][None], protocol).argmax(1), item["mask"][None])
    return 100 * float(metric.compute())


print("as fit left it (statistics of 1x images): dev at 1x", round(miou(1.0), 2), "at 2x", round(miou(2.0), 2))
batches = (
    F.interpolate(images, scale_factor=2.0, mode="bilinear", align_corners=False)
    for images in datamodule.full_size_batches(64, 2)
)
print("recalibrated on", recalibrate_batchnorm(net, batches), "training images at 2x")
print("dev at 2x", round(miou(2.0), 2), "at 1x", round(miou(1.0), 2))
