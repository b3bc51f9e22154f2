"""A one-off profile (2026-12-03, AMD Zen 2, AVX2 only, torch 2.13.0; output in output.txt): where a float32
NCHW training step of the CPU recipe goes, in a plain loop of the benchmark's own step (BiSeNetV2, 8 x 192x256
random crops, main + four booster losses, fused AdamW): 4 warm-up steps, 4 timed (ms/step), then 4 under torch's
profiler.

    python results/speed_zen2/profile_step.py
"""

import sys
import time
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from training_speed import RECIPE_CONFIG, TrainingBench, heads_loss, recipe_options  # noqa: E402

options, _ = recipe_options(RECIPE_CONFIG)
options["channels_last"] = False  # auto's choice on this CPU
bench = TrainingBench(dict(device="cpu", size="192x256", batch=8, num_classes=11, max_block=12))
model = bench.module(**options)
model.trainer = bench.trainer(20, "32-true")
model.configure_model()
optimiser = model.configure_optimizers()["optimizer"]
model.train()
batches = list(bench.loader(12))


def step(batch: dict) -> None:
    x, y = batch["image"], batch["mask"]
    loss = heads_loss(model, model.criterion, model(x), y)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


for batch in batches[:4]:
    step(batch)
start = time.perf_counter()
for batch in batches[4:8]:
    step(batch)
print("ms/step", (time.perf_counter() - start) / 4 * 1000)
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for batch in batches[8:12]:
        step(batch)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
