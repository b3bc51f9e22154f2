"""Uniform soup of finished runs' weights files (bisenet-pl export --format weights): the element-wise
mean of every floating-point tensor, BatchNorm statistics then recomputed on the 64 whole training images
fit's recalibration uses (0006R0 held out, batches of 2 as in the finish), written as a weights file.
    python results/recipe_fp32_zen2/soup.py OUT.pt IN1.pt IN2.pt ...
"""

import sys

import torch

from bisenet_pl.batchnorm import recalibrate_batchnorm
from bisenet_pl.data import CamVidDataModule
from bisenet_pl.models.weights import StoredWeights
from bisenet_pl.module import SegmentationModule

out, *inputs = sys.argv[1:]
files = [torch.load(path, map_location="cpu", weights_only=False) for path in inputs]
states = [f["state_dict"] for f in files]
assert all(s.keys() == states[0].keys() for s in states)
soup = {}
for key, first in states[0].items():
    if first.is_floating_point():
        soup[key] = torch.stack([s[key].double() for s in states]).mean(0).to(first.dtype)
    else:
        soup[key] = first.clone()
stored = dict(files[0], state_dict=soup)
stored["training"] = dict(files[0]["training"], source=f"uniform average of {', '.join(inputs)}")

module = SegmentationModule.from_pretrained(StoredWeights(out, stored))  # built in memory: the file is written once
data = CamVidDataModule(root="../shared/camvid", dev_sequences=["0006R0"], batch_size=2, cache_images=False)
data.setup("fit")
used = recalibrate_batchnorm(module.net, data.full_size_batches(64, 2))
state = module.net.state_dict()
for key in soup:
    soup[key] = state[key].detach().clone()
torch.save(dict(stored, state_dict=soup), out)
print(f"{out}: average of {len(inputs)} files, BatchNorm statistics recomputed on {used} images")
