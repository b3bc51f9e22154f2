"""A one-off check (2026-12-03, AMD Zen 4, torch 2.13.0; output in output.txt): can the released file's head run
with fewer of its 1024 channels? Drop the channels whose largest activation on 62 training images (every sixth by
name) times their classifier weights is smallest, move their mean activation into the classifier's bias, and score
the file on the 101 CamVid val images in float32, the way validation scores them.

    python results/head_pruning/prune_head.py ../shared/camvid
"""

import copy
import sys

import torch

from bisenet_pl.data import CamVidDataModule
from bisenet_pl.evaluation import class_scores
from bisenet_pl.metrics import segmentation_metrics
from bisenet_pl.module import SegmentationModule

torch.set_num_threads(1)
model = SegmentationModule.from_pretrained("bisenetv2_camvid")
net = model.net
datamodule = CamVidDataModule(root=sys.argv[1] if len(sys.argv) > 1 else "../shared/camvid", num_workers=0)
train, val = datamodule.dataset("train"), datamodule.dataset("val")  # both unaugmented
by_name = sorted(range(len(train)), key=lambda index: str(train.samples[index][0]))
calibration = [train[index]["image"][None] for index in by_name[::6]]
channels = net.head.classifier.in_channels
activation_sum, activation_max, pixels = torch.zeros(channels), torch.zeros(channels), 0


def record(module, inputs, output):
    # Statistics of the head's conv-BN-ReLU output: what each channel adds to the classifier.
    global activation_sum, activation_max, pixels
    activation_sum += output.sum(dim=(0, 2, 3))
    activation_max = torch.maximum(activation_max, output.amax(dim=(0, 2, 3)))
    pixels += output.shape[2] * output.shape[3]


hook = net.head.conv.register_forward_hook(record)
with torch.no_grad():
    for image in calibration:
        net(image)
hook.remove()
activation_mean = activation_sum / pixels
weight = net.head.classifier.weight.detach()[:, :, 0, 0]  # classes x channels
contribution = activation_max * weight.abs().sum(0)


def miou(network) -> float:
    metric = segmentation_metrics(model.num_classes, model.ignore_index)["mIoU"]
    with torch.no_grad():
        for item in val:
            metric.update(class_scores(network, item["image"][None], model.evaluation).argmax(1), item["mask"][None])
    return 100 * float(metric.compute())


def without_channels(gone: torch.Tensor, keep: torch.Tensor):
    """A copy of the network whose head keeps only ``keep``; the mean output of ``gone`` moves into the bias."""
    pruned = copy.deepcopy(net)
    conv, bn, classifier = pruned.head.conv.conv, pruned.head.conv.bn, pruned.head.classifier
    conv.weight = torch.nn.Parameter(conv.weight.detach()[keep])
    bn.weight, bn.bias = torch.nn.Parameter(bn.weight.detach()[keep]), torch.nn.Parameter(bn.bias.detach()[keep])
    bn.running_mean, bn.running_var = bn.running_mean[keep], bn.running_var[keep]
    classifier.bias = torch.nn.Parameter(classifier.bias.detach() + weight[:, gone] @ activation_mean[gone])
    classifier.weight = torch.nn.Parameter(classifier.weight.detach()[:, keep])
    return pruned


print("calibration images", len(calibration), "val", len(val))
print("full head:", round(miou(net), 2))
order = contribution.argsort()
for drop in [256, 384, 448, 512]:
    gone, keep = order[:drop], order[drop:].sort().values
    largest = round(float(contribution[gone].max()), 2)
    print("drop", drop, "max contribution dropped", largest, "mIoU", round(miou(without_channels(gone, keep)), 2))
