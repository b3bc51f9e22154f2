"""A one-off count (2026-12-03, AMD Zen 2; output in output.txt): the floating-point operations of one
training step like profile_step.py's, by operator (torch's FlopCounterMode, forward and backward; a
multiply-add counts 2), and the speed of a 2048x2048 float32 matrix multiply in the same process, for scale.

    python results/speed_zen2/flops.py
"""

import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from training_speed import RECIPE_CONFIG, TrainingBench, heads_loss, recipe_options  # noqa: E402

options, _ = recipe_options(RECIPE_CONFIG)
options["channels_last"] = False
bench = TrainingBench(dict(device="cpu", size="192x256", batch=8, num_classes=11, max_block=2))
model = bench.module(**options)
model.train()
x, y = bench.images[:8], bench.masks[:8]
counter = FlopCounterMode(display=False)
with counter:
    loss = heads_loss(model, model.criterion, model(x), y)
    loss.backward()
print("total GFLOP fwd+bwd", counter.get_total_flops() / 1e9)
for op, flops in counter.get_flop_counts()["Global"].items():
    print(op, flops / 1e9)
a = torch.randn(2048, 2048)
a @ a
start = time.perf_counter()
for _ in range(20):
    a @ a
seconds = (time.perf_counter() - start) / 20
print("matmul GFLOP/s", 2 * 2048**3 / seconds / 1e9)
