"""A one-off check (2026-12-03, AMD Zen 4, torch 2.13.0; output in output.txt): can the released file's head run
with fewer of its 1024 channels? Drop the channels whose largest activation on 62 training images times their
classifier weights is smallest, move their mean activation into the classifier's bias, and score the file on the
101 CamVid val images in float32.

    python results/head_pruning/prune_head.py ../shared/camvid
"""

import copy
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bisenet_pl.module import SegmentationModule

root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/camvid")
torch.set_num_threads(1)
model = SegmentationModule.from_pretrained("bisenetv2_camvid")
net = model.net.eval()
mean = torch.tensor(model.weights_info.mean).view(1, 3, 1, 1)
std = torch.tensor(model.weights_info.std).view(1, 3, 1, 1)


def load(path):
    image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
    return (image - mean) / std


activation_sum, activation_max, pixels = torch.zeros(1024), torch.zeros(1024), 0


def record(module, inputs, output):
    global activation_sum, activation_max, pixels
    activation_sum += output.sum(dim=(0, 2, 3))
    activation_max = torch.maximum(activation_max, output.amax(dim=(0, 2, 3)))
    pixels += output.shape[2] * output.shape[3]


hook = net.head.conv.register_forward_hook(record)
calibration = sorted((root / "train").glob("*.png"))[::6]
with torch.no_grad():
    for path in calibration:
        net(load(path))
hook.remove()
activation_mean = activation_sum / pixels
weight = net.head.classifier.weight.detach()[:, :, 0, 0]  # classes x 1024
contribution = activation_max * weight.abs().sum(0)

val = sorted((root / "val").glob("*.png"))
images = [load(path) for path in val]
labels = [torch.from_numpy(np.array(Image.open(root / "valannot" / path.name))).long() for path in val]


def miou(network) -> float:
    confusion = torch.zeros(11, 11, dtype=torch.long)
    with torch.no_grad():
        for image, label in zip(images, labels):
            predicted = network(image).argmax(1)[0]
            known = label < 11
            confusion += torch.bincount(label[known] * 11 + predicted[known], minlength=121).view(11, 11)
    iou = confusion.diag() / (confusion.sum(0) + confusion.sum(1) - confusion.diag()).clamp(min=1)
    return float(iou.mean()) * 100


print("calibration images", len(calibration), "val", len(val))
print("full head:", round(miou(net), 2))
order = contribution.argsort()
for drop in [256, 384, 448, 512]:
    pruned = copy.deepcopy(net)
    keep, gone = order[drop:].sort().values, order[:drop]
    conv, bn, classifier = pruned.head.conv.conv, pruned.head.conv.bn, pruned.head.classifier
    conv.weight = torch.nn.Parameter(conv.weight.detach()[keep])
    bn.weight, bn.bias = torch.nn.Parameter(bn.weight.detach()[keep]), torch.nn.Parameter(bn.bias.detach()[keep])
    bn.running_mean, bn.running_var = bn.running_mean[keep], bn.running_var[keep]
    classifier.bias = torch.nn.Parameter(classifier.bias.detach() + weight[:, gone] @ activation_mean[gone])
    classifier.weight = torch.nn.Parameter(classifier.weight.detach()[:, keep])
    largest = round(float(contribution[gone].max()), 2)
    print("drop", drop, "max contribution dropped", largest, "mIoU", round(miou(pruned), 2))
