"""benchmarks/speed.py runs and prints its tables (tiny sizes: no timing is asserted here)."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import load_benchmark
from synthetic import make_camvid_segnet

from bisenet_pl.measure import count_flops, measure_interleaved, percentile
from bisenet_pl.models import BiSeNetV2


def load_script():
    return load_benchmark("speed")


def test_speed_script_prints_both_tables_and_json(capsys, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    load_script().main([
        "--networks", "v2", "--sizes", "64x96", "--variants", "reference", "folded+channels_last", "onnxruntime",
        "--iterations", "2", "--warmup", "0", "--train-size", "64x96", "--train-batch", "2", "--train-steps", "2",
        "--train-rounds", "2", "--json", str(tmp_path / "speed.json"),
    ])  # fmt: skip
    output = capsys.readouterr().out
    assert output.startswith("Machine: ")
    assert "| kind | network | size | batch | variant | params_M | GFLOPs | ms_per_batch |" in output
    assert "| inference | BiSeNetV2 | 64x96 | 1 | reference | 3.35 |" in output and "| folded+channels_last |" in output
    assert "| train | BiSeNetV2 | 64x96 | 2 | reference (plain loop, fp32, NCHW) |" in output
    # precision and channels_last auto: a row for each precision and memory format it weighed, the fastest
    # marked as its choice; one its forward pass ruled out (bf16 without bf16 instructions) says so, untimed.
    for candidate in ("32-true NCHW", "32-true channels-last", "bf16-mixed NCHW", "bf16-mixed channels-last"):
        assert f"| LightningModule (camvid_cpu.yaml: {candidate}" in output
    assert output.count("(auto's choice)") == 2  # its plain loop and its LightningModule row
    rows = json.loads((tmp_path / "speed.json").read_text())
    assert [row["kind"] for row in rows] == ["inference"] * 3 + ["train"] * 6
    untimed = [row for row in rows if "ms_per_batch" not in row]
    assert all("not timed: a forward pass over 2x the fastest's" in row["variant"] for row in untimed)
    for row in (row for row in rows if row not in untimed):
        assert {"kind", "network", "size", "batch", "variant", "ms_per_batch", "images_per_s", "x_reference"} <= set(
            row
        )
        assert row["ms_per_batch"] > 0 and row["images_per_s"] == pytest.approx(
            1000 * row["batch"] / row["ms_per_batch"]
        )
    assert rows[0]["x_reference"] == 1.0 and rows[3]["x_reference"] == 1.0  # each table's reference row
    assert list(scratch.iterdir()) == []  # the exported file's folder removed after the run


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--sizes", "0x0", "height and width must be at least 32"), ("--sizes", "7",
    "is not a size: expected HEIGHTxWIDTH"),
    ("--sizes", "abc", "is not a size"), ("--train-size", "64x", "is not a size"),
])  # fmt: skip
def test_bad_sizes_are_one_line_errors(capsys, option, value, message):
    with pytest.raises(SystemExit) as exited:
        load_script().main([option, value])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and f"error: {option}: '{value}'" in error and message in error


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--train-batch", "0", "must be at least 2 (BatchNorm of a training step); got 0"),  # a traceback after the table
    ("--train-steps", "0", "must be at least 1; got 0"), ("--train-rounds", "0", "must be at least 1; got 0"),
    ("--iterations", "0", "must be at least 1"), ("--warmup", "-1", "must be at least 0"),
    ("--batch-size", "0", "must be at least 1"), ("--num-classes", "1", "must be at least 2"),
    ("--val-images", "0", "must be at least 1"), ("--calibration-images", "0", "must be at least 1"),
    ("--benchmark-app", "-5", "must be at least 0"), ("--iterations", "many", "'many' is not a whole number"),
])  # fmt: skip
def test_bad_counts_are_one_line_errors_before_any_work(capsys, option, value, message):
    with pytest.raises(SystemExit) as exited:
        load_script().main([option, value])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and f"argument {option}: {message}" in error and "Traceback" not in error


def test_a_json_path_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for path, message in (
        (tmp_path, f"--json {tmp_path} is a folder: give the file's path"),  # found after the whole run
        (tmp_path / "notes.txt" / "speed.json", "notes.txt is a file, not a folder"),
    ):
        with pytest.raises(SystemExit) as exited:
            load_script().main(["--json", str(path)])
        printed = capsys.readouterr()
        assert exited.value.code == 2 and message in printed.err and "Machine:" not in printed.out  # no work began


def test_a_checkpoint_that_is_not_there_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    for checkpoint, message in (
        (tmp_path / "missing.pt", "does not exist"),
        (tmp_path / "garbage.pt", "not a PyTorch"),
    ):
        with pytest.raises(SystemExit) as exited:
            load_script().main(["--checkpoint", str(checkpoint), "--skip-training"])
        error = capsys.readouterr().err
        assert exited.value.code == 2 and "Traceback" not in error
        assert "error: --checkpoint: " in error and str(checkpoint) in error and message in error


def test_which_to_pick_is_computed_from_the_run():
    def row(variant, ms, exact, miou=None):
        scored = {} if miou is None else {"miou": miou, "within_1_miou": miou >= 64.9}
        return {"kind": "inference", "network": "BiSeNetV2", "size": "512x1024", "variant": variant,
                "ms_per_batch": ms, "x_reference": 400 / ms, "exact": exact} | scored  # fmt: skip

    rows = [row("reference", 400, True, 65.9), row("onnxruntime", 130, True, 65.9), row("openvino-int8", 50, False,
    64.0),
            row("openvino-bf16", 70, False, 65.8)]  # fmt: skip
    assert load_script().which_to_pick(rows) == [
        "- BiSeNetV2 512x1024: exact: onnxruntime (130 ms, 3.08x); within 1.0 mIoU of fp32: openvino-bf16 (70 ms, "
        "5.71x, mIoU 65.80)"
    ]
    unscored = [row("reference", 400, True), row("openvino-int8", 50, False)]
    assert (
        "fastest (not scored: give --checkpoint and --data-root): openvino-int8"
        in load_script().which_to_pick(unscored)[0]
    )


def test_flops_and_percentiles():
    # FlopCounterMode counts a multiply-add as 2: a 1x1 conv of 3->1 channels on 4 pixels is 24 FLOPs.
    assert count_flops(torch.nn.Conv2d(3, 1, 1, bias=False), torch.randn(1, 3, 2, 2)) == 24
    flops_small = count_flops(BiSeNetV2(19).eval(), torch.randn(1, 3, 64, 128))
    flops_large = count_flops(BiSeNetV2(19).eval(), torch.randn(1, 3, 128, 256))
    assert flops_large == pytest.approx(4 * flops_small, rel=0.02)  # FLOPs grow with the pixel count
    assert percentile([1, 2, 3, 4, 5], 50) == 3 and percentile([1, 2, 3, 4, 5], 90) == pytest.approx(4.6)
    calls = []
    latencies = measure_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, iterations=4, rounds=2
    )
    assert set(latencies) == {"a", "b"} and calls.count("a") == calls.count("b") == 1 + 2 + 4  # warm-up, untimed, timed
    assert calls[2:5] == ["a"] * 3  # blocks: untimed call then 2 timed calls of one variant


@pytest.mark.slow
def test_speed_script_scores_every_variant_with_weights_and_data(tmp_path):
    """--checkpoint and --data-root add each variant's val mIoU, and every row says how far its
    logits are from PyTorch fp32's (exact: within 1e-4 of their scale)."""
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 2})
    # In its own process, as it is run: DataLoader workers forked later by this test process crashed
    # (SIGSEGV, about one run in two) after it had run all four variants in-process.
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    done = subprocess.run([
        sys.executable, str(script), "--networks", "v2", "--sizes", "64x96", "--variants", "reference", "onnxruntime",
        "openvino", "openvino+winograd", "openvino-int8", "openvino-int8+half", "--iterations", "1", "--warmup", "0",
        "--skip-training",
        "--checkpoint",
        "bisenetv2_camvid", "--data-root", str(camvid), "--calibration-images", "2", "--benchmark-app", "1",
        "--json", str(tmp_path / "speed.json"),
    ], capture_output=True, text=True, timeout=300,
        env=os.environ | {"WANDB_MODE": "disabled", "BISENET_PL_CACHE": str(tmp_path / "cache")})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads((tmp_path / "speed.json").read_text())
    rows = {row["variant"]: row for row in written if row["kind"] == "inference"}
    assert list(rows) == [
        "reference",
        "onnxruntime",
        "openvino",
        "openvino+winograd",
        "openvino-int8",
        "openvino-int8+half",
    ]
    assert "openvino: winograd=auto: " in done.stderr  # the measured choice, whatever it was on this machine
    # OpenVINO's files also timed by OpenVINO's benchmark_app, and with several images in flight
    for variant in ("openvino", "openvino+winograd", "openvino-int8", "openvino-int8+half"):
        assert rows[variant]["benchmark_app_p50_ms"] > 0
        assert rows[variant]["p50_vs_benchmark_app"] == pytest.approx(
            rows[variant]["p50_ms"] / rows[variant]["benchmark_app_p50_ms"]
        )
    assert "benchmark_app_p50_ms" not in rows["onnxruntime"]
    throughput = [row for row in written if row["kind"] == "throughput"]
    assert [row["variant"].split(" (")[0] for row in throughput] == [
        "openvino", "openvino+winograd", "openvino-int8", "openvino-int8+half"
    ]  # fmt: skip
    assert all(row["images_per_s"] > 0 and "in flight)" in row["variant"] for row in throughput)
    assert "Throughput, several images in flight:" in done.stdout
    for row in rows.values():
        assert {"miou", "within_1_miou", "max_abs_diff", "logit_scale", "exact"} <= set(row) and 0 <= row["miou"] <= 100
    assert rows["reference"]["max_abs_diff"] == 0 and rows["reference"]["within_1_miou"]
    assert rows["onnxruntime"]["exact"] and rows["openvino"]["exact"]  # fp32: PyTorch's logits to round-off
    assert rows["openvino+winograd"]["exact"] and rows["openvino+winograd"]["miou"] == pytest.approx(
        rows["reference"]["miou"], abs=0.01
    )  # with or without rewritten layers
    assert rows["onnxruntime"]["miou"] == pytest.approx(rows["reference"]["miou"], abs=0.01)
    assert not rows["openvino-int8"]["exact"]  # int8 is close, not equal
    # half-resolution labels: the same logits (compared as such), other class ids (scored as such)
    assert rows["openvino-int8+half"]["max_abs_diff"] == rows["openvino-int8"]["max_abs_diff"]
    assert "| logit_scale | exact | miou | within_1_miou |" in done.stdout


def test_speed_script_takes_weights_without_data(tmp_path):
    """--checkpoint alone times the trained network with its own normalisation (nothing scored)."""
    load_script().main([
        "--networks", "v2", "--sizes", "64x96", "--variants", "reference", "folded+channels_last", "--iterations", "1",
        "--warmup", "0", "--skip-training", "--checkpoint", "bisenetv2_camvid", "--json", str(tmp_path / "speed.json"),
    ])  # fmt: skip
    rows = json.loads((tmp_path / "speed.json").read_text())
    assert [row["variant"] for row in rows] == ["reference", "folded+channels_last"] and all(
        row["exact"] for row in rows
    )
    assert "miou" not in rows[0] and rows[0]["params_M"] == pytest.approx(3.34, abs=0.01)  # the 11-class network
