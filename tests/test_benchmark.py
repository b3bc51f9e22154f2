"""benchmarks/speed.py runs and prints its tables (tiny sizes: no timing is asserted here)."""

import importlib.util
from pathlib import Path

import pytest
import torch

from bisenet_pl.benchmark import count_flops, measure_interleaved, percentile
from bisenet_pl.models import BiSeNetV2

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def load_script():
    spec = importlib.util.spec_from_file_location("speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_script_prints_both_tables(capsys):
    load_script().main([
        "--networks", "v2", "--sizes", "64x96", "--variants", "reference", "folded+channels_last",
        "--iterations", "2", "--warmup", "0", "--train-size", "64x96", "--train-batch", "2", "--train-steps", "2",
        "--train-warmup", "1",
    ])  # fmt: skip
    output = capsys.readouterr().out
    assert output.startswith("Machine: ")
    assert "| network | size | params (M) | GFLOPs | variant | mean ms | p50 ms | p90 ms | p99 ms | FPS | x reference | setup s |" in output
    assert "| BiSeNetV2 | 64x96 | 3.35 |" in output and "| folded+channels_last |" in output
    assert "| plain PyTorch loop (before) |" in output and "| LightningModule (Trainer) |" in output
    assert "| plain PyTorch loop (after) |" in output


def test_flops_and_percentiles():
    # FlopCounterMode counts a multiply-add as 2: a 1x1 conv of 3->1 channels on 4 pixels is 24 FLOPs.
    assert count_flops(torch.nn.Conv2d(3, 1, 1, bias=False), torch.randn(1, 3, 2, 2)) == 24
    flops_small = count_flops(BiSeNetV2(19).eval(), torch.randn(1, 3, 64, 128))
    flops_large = count_flops(BiSeNetV2(19).eval(), torch.randn(1, 3, 128, 256))
    assert flops_large == pytest.approx(4 * flops_small, rel=0.02)  # FLOPs grow with the pixel count
    assert percentile([1, 2, 3, 4, 5], 50) == 3 and percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    calls = []
    latencies = measure_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, iterations=4, rounds=2)
    assert set(latencies) == {"a", "b"} and calls.count("a") == calls.count("b") == 1 + 2 + 4  # warm-up, untimed, timed
    assert calls[2:5] == ["a"] * 3  # blocks: untimed call then 2 timed calls of one variant
