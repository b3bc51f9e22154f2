"""The CPU recipe's parts: precision chosen from what the CPU computes natively, decoded images
held in memory, and configs/camvid_cpu.yaml using both."""

import json
import logging
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from synthetic import make_camvid_segnet

from bisenet_pl import hardware
from bisenet_pl import precision as precision_module
from bisenet_pl.allocator import USER_SETTINGS, user_chose_allocator
from bisenet_pl.cli import build_cli
from bisenet_pl.data import CamVidDataModule
from bisenet_pl.data.io import read_image
from bisenet_pl.errors import ConfigError
from bisenet_pl.models import BiSeNetV2
from bisenet_pl.module import SegmentationModule
from bisenet_pl.precision import (
    CPU_CANDIDATES,
    CandidateStep,
    candidate_name,
    choose_fastest,
    fastest_cpu_precision,
    time_alternately,
)
from bisenet_pl.results import metric_history
from bisenet_pl.time_budget import steps_within
from bisenet_pl.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    """A clock that only the fake steps move: each step "takes" its given seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float):
        def run() -> None:
            self.now += seconds

        return run


def measuring_with(monkeypatch, tmp_path: Path, seconds) -> Path:
    """A synthetic CamVid (4 train, 2 val, 2 test images), a measurement cache of the test's own, and fake
    timings for every measurement: ``seconds`` per candidate name (a dict, read when measured) or a function
    of the step functions (each with ``train`` and ``images``)."""
    monkeypatch.setenv("BISENET_PL_CACHE", str(tmp_path / "cache"))
    timing = seconds if callable(seconds) else (lambda steps, **_: {name: seconds[name] for name in steps})
    monkeypatch.setattr(precision_module, "time_alternately", timing)
    return make_camvid_segnet(tmp_path / "camvid")


def test_the_fastest_step_wins_and_bf16_must_beat_float32_clearly():
    assert choose_fastest({"32-true": 1.0, "bf16-mixed": 0.55}) == "bf16-mixed"
    assert choose_fastest({"32-true": 1.0, "bf16-mixed": 0.95}) == "32-true"  # 5% faster: not worth the numerics
    assert choose_fastest({"32-true": 1.0, "bf16-mixed": 1.4}) == "32-true"
    # Memory formats compute alike: the faster float32 wins by any margin, and bf16 must beat it.
    exact = lambda name: name.startswith("32-true")  # noqa: E731
    formats = {"32-true NCHW": 0.9, "32-true channels-last": 1.0, "bf16-mixed NCHW": 0.85}
    assert choose_fastest(formats, exact=exact) == "32-true NCHW"
    assert choose_fastest(formats | {"bf16-mixed channels-last": 0.5}, exact=exact) == "bf16-mixed channels-last"
    assert choose_fastest({"32-true NCHW": float("inf"), "bf16-mixed NCHW": 2.0}, exact=exact) == "bf16-mixed NCHW"
    clock = FakeClock()
    medians = time_alternately({"32-true": clock.step(0.8), "bf16-mixed": clock.step(0.5)}, budget_s=60, clock=clock)
    assert medians == {"32-true": pytest.approx(0.8), "bf16-mixed": pytest.approx(0.5)}
    # A slow step: the budget stops the measurement after two timed steps of each.
    calls = []
    clock = FakeClock()

    def slow() -> None:
        calls.append(1)
        clock.now += 30

    time_alternately({"a": slow, "b": clock.step(30)}, budget_s=20, timed_steps=5, clock=clock)
    assert len(calls) == 3  # one untimed, two timed


def test_a_candidate_far_slower_in_its_forward_pass_is_never_timed():
    """bf16 without native instructions: a training step took 24 s where float32's took 2.5 (Zen 3)."""
    clock, calls = FakeClock(), []

    def emulated_step() -> None:
        calls.append("step")
        clock.now += 24

    probes = {
        "32-true NCHW": clock.step(0.1),
        "32-true channels-last": clock.step(0.15),
        "bf16-mixed NCHW": clock.step(1.0),
    }
    steps = {
        "32-true NCHW": clock.step(2.3),
        "32-true channels-last": clock.step(2.5),
        "bf16-mixed NCHW": emulated_step,
    }
    medians = time_alternately(steps, budget_s=20, clock=clock, probes=probes)
    assert calls == [] and medians["bf16-mixed NCHW"] == float("inf")
    assert medians["32-true NCHW"] == pytest.approx(2.3) and medians["32-true channels-last"] == pytest.approx(2.5)
    assert clock.now == pytest.approx(2 * 1.25 + 4 * 4.8)  # two probes each, then float32's untimed and 3 timed steps


def test_measuring_leaves_the_run_s_random_stream_alone(tmp_path):
    """The CPU study's seed-42 runs drew other dropout masks when precision=auto measured than when it read
    the cache (the probe trains a copy of the network): a run's result must not depend on the cache."""
    module = SegmentationModule(net=BiSeNetV2, num_classes=3)

    def measure_by_running(steps):
        for step in steps.values():
            step()  # a training step of the copy: dropout draws from the global RNG
        return {"32-true NCHW": 0.9, "bf16-mixed NCHW": 0.4}

    torch.manual_seed(42)
    before = torch.get_rng_state()
    fastest_cpu_precision(module, 2, (64, 96), measure=measure_by_running, cache=tmp_path / "precision.json")
    assert torch.equal(torch.get_rng_state(), before)


def test_auto_measures_once_per_machine_and_shape_then_reads_the_cache(tmp_path):
    module = SegmentationModule(net=BiSeNetV2, num_classes=3, channels_last=True)
    cache = tmp_path / "precision.json"
    measured = []

    def fake_measure(steps):
        measured.append(sorted(steps))
        return {"32-true channels-last": 0.9, "bf16-mixed channels-last": 0.4}

    first = fastest_cpu_precision(module, 8, (192, 256), measure=fake_measure, cache=cache)
    assert (first.precision, first.channels_last, first.cached) == ("bf16-mixed", True, False)
    assert measured == [["32-true channels-last", "bf16-mixed channels-last"]]
    assert (
        "bf16-mixed channels-last, the fastest for a training step of BiSeNetV2 (8 x 192x256) (measured now: "
        "32-true channels-last 900 ms, bf16-mixed channels-last 400 ms (2.25x))" in first.describe()
    )
    again = fastest_cpu_precision(module, 8, (192, 256), measure=fake_measure, cache=cache)
    assert again.cached and again.precision == "bf16-mixed" and len(measured) == 1
    fastest_cpu_precision(module, 8, (360, 480), measure=fake_measure, cache=cache)  # another shape: measured
    fastest_cpu_precision(module, 4, (192, 256), train=False, measure=fake_measure, cache=cache)  # evaluation: measured
    assert len(measured) == 3 and len(json.loads(cache.read_text())) == 3
    only_fp32 = fastest_cpu_precision(module, 8, (192, 256), candidates=("32-true",), measure=fake_measure, cache=cache)
    assert only_fp32.cached and only_fp32.step_ms == {"32-true channels-last": 900.0}  # a subset of what was measured
    cache.write_text("{not json")  # a damaged cache is measured again and rewritten
    assert not fastest_cpu_precision(module, 8, (192, 256), measure=fake_measure, cache=cache).cached


def test_a_measurement_on_a_busy_machine_is_used_but_not_remembered(tmp_path, monkeypatch):
    """Timings taken while other processes ran would size every later --train_minutes run on the machine."""
    module = SegmentationModule(net=BiSeNetV2, num_classes=3, channels_last=True)
    cache = tmp_path / "precision.json"
    clocks = []  # (capacity, busy, own) CPU seconds, read before and after each measurement
    monkeypatch.setattr(hardware, "cpu_seconds", lambda: clocks.pop(0))
    monkeypatch.setattr(hardware.psutil, "cpu_count", lambda: 2)
    measured = []

    def fake_measure(steps):
        measured.append(1)
        return {"32-true channels-last": 3.0, "bf16-mixed channels-last": 6.0}

    # 10 s on 2 CPUs: 20 CPU seconds, 19 busy, 12 of them ours: others took 35%.
    clocks[:] = [(100.0, 50.0, 5.0), (120.0, 69.0, 17.0)]
    busy = fastest_cpu_precision(module, 8, (192, 256), measure=fake_measure, cache=cache)
    assert busy.chosen == "32-true channels-last" and not busy.cached and not cache.exists()
    assert "(measured now while other processes took 35% of the CPUs, so not remembered: 32-true" in busy.describe()
    # Measured again; others took 1 of 20 CPU seconds (5%): remembered, and said as usual.
    clocks[:] = [(200.0, 80.0, 20.0), (220.0, 99.0, 38.0)]
    quiet = fastest_cpu_precision(module, 8, (192, 256), measure=fake_measure, cache=cache)
    assert len(measured) == 2 and "(measured now: 32-true channels-last 3000 ms" in quiet.describe()
    assert fastest_cpu_precision(module, 8, (192, 256), measure=fake_measure, cache=cache).cached and len(measured) == 2
    # A measurement too short to judge (fake timings in tests, a tiny network) is remembered.
    clocks[:] = [(300.0, 80.0, 20.0), (300.5, 81.0, 20.0)]
    short = fastest_cpu_precision(module, 4, (192, 256), measure=fake_measure, cache=cache)
    assert short.busy_share is None and len(json.loads(cache.read_text())) == 2


def test_channels_last_auto_measures_both_memory_formats_and_says_what_was_not_timed(tmp_path):
    module = SegmentationModule(net=BiSeNetV2, num_classes=3, channels_last="auto")
    timings = {"32-true NCHW": 2.3, "32-true channels-last": 2.5, "bf16-mixed NCHW": float("inf"),
               "bf16-mixed channels-last": float("inf")}  # fmt: skip
    choice = fastest_cpu_precision(
        module, 8, (192, 256), measure=lambda steps: {n: timings[n] for n in steps}, cache=tmp_path / "c.json"
    )
    assert (choice.precision, choice.channels_last, choice.chosen) == ("32-true", False, "32-true NCHW")
    assert choice.describe().endswith(
        "(measured now: 32-true NCHW 2300 ms, 32-true channels-last 2500 ms (0.92x); not timed, a forward pass over "
        "2x the fastest's: bf16-mixed NCHW, bf16-mixed channels-last)"
    )
    cached = fastest_cpu_precision(module, 8, (192, 256), measure=None, cache=tmp_path / "c.json")
    assert cached.cached and cached.chosen == "32-true NCHW"  # infinities survive the JSON cache


def test_the_step_functions_run_a_real_step_in_each_precision():
    module = SegmentationModule(net=BiSeNetV2, num_classes=3)
    names = [candidate_name(precision, last) for precision in CPU_CANDIDATES for last in (False, True)]
    steps = {name: CandidateStep(module, name, 2, (64, 64), train=True) for name in names}
    seconds = time_alternately(steps, timed_steps=1, probes={name: step.probe for name, step in steps.items()})
    assert set(seconds) == set(names) and all(s > 0 for s in seconds.values())
    assert steps["32-true channels-last"].images.is_contiguous(memory_format=torch.channels_last)
    assert steps["32-true NCHW"].images.is_contiguous()


def test_the_command_line_resolves_auto_by_measuring(tmp_path, monkeypatch, caplog):
    timings = {
        "32-true NCHW": 0.3,
        "32-true channels-last": 0.35,
        "bf16-mixed NCHW": 0.7,
        "bf16-mixed channels-last": 0.6,
    }
    root = measuring_with(monkeypatch, tmp_path, timings)
    args = [
        "--config", str(REPO / "configs" / "camvid_cpu.yaml"), f"--data.root={root}", "--trainer.max_steps=1",
        "--data.batch_size=2", "--data.crop_size=[32,48]", "--progress_bar.refresh_rate=0",
        f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO):
        cli = build_cli(args, run=False)
    assert cli.trainer.precision == "32-true" and cli.model.measured_channels_last is False
    assert (
        "trainer.precision=auto: 32-true NCHW, the fastest for a training step of BiSeNetV2 (2 x 32x48)" in caplog.text
    )
    timings.update({"bf16-mixed NCHW": 0.1})  # cached: the earlier measurement stands
    assert build_cli(args, run=False).trainer.precision == "32-true"
    assert (
        build_cli([*args, "--trainer.precision=bf16-mixed"], run=False).trainer.precision == "bf16-mixed"
    )  # given: kept


def test_a_gpu_recipes_fp16_on_a_cpu_is_measured_not_replaced_by_bf16_unseen(tmp_path, monkeypatch, caplog):
    """configs/camvid.yaml trains in 16-mixed (the reference's fp16 AMP on a GPU). A CPU has no fp16 autocast, and
    Lightning would run bf16-mixed instead, unmeasured: 9.5 s for one 360x480 image on an AVX2-only Zen 3, where
    float32 takes 0.3. On a CPU the two it can compute are timed instead, and the line says so."""
    timings = {"32-true NCHW": 0.3, "bf16-mixed NCHW": 3.0}
    root = measuring_with(monkeypatch, tmp_path, timings)
    args = [
        "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}", "--trainer.accelerator=cpu",
        "--data.batch_size=2", "--data.crop_size=[32,48]", "--data.num_workers=0",
        f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO):
        assert build_cli(args, run=False).trainer.precision == "32-true"
    assert (
        "trainer.precision=16-mixed, which a CPU does not compute (fp16 autocast), measured like auto: 32-true NCHW, "
        "the fastest for a training step of BiSeNetV2 (2 x 32x48) (measured now: 32-true NCHW 300 ms, bf16-mixed NCHW "
        "3000 ms (0.10x))" in caplog.text
    )
    monkeypatch.setenv("BISENET_PL_CACHE", str(tmp_path / "cache2"))  # a CPU where bf16 is native and faster
    timings.update({"bf16-mixed NCHW": 0.15})
    assert build_cli(args, run=False).trainer.precision == "bf16-mixed"
    assert build_cli([*args, "--trainer.precision=32"], run=False).trainer.precision == "32-true"  # given: kept
    # test and validate time a forward pass at the size of the images they read, not of the training crop.
    with caplog.at_level(logging.INFO):
        build_cli(["test", *args, "--ckpt_path=null", "--progress_bar.refresh_rate=0"])
    height, width = read_image(next((root / "test").iterdir())).shape[:2]
    assert f"the fastest for a forward pass of BiSeNetV2 (4 x {height}x{width})" in caplog.text


def test_train_minutes_sizes_the_schedule_from_the_measured_step_and_validations(tmp_path, monkeypatch, caplog):
    def fake_timing(steps, **_):  # a training step 500 ms in float32, 250 in bf16; 1 s a validation image
        return {name: {"32-true": 0.5, "bf16-mixed": 0.25}[name.split()[0]] if step.train else len(step.images)
                for name, step in steps.items()}  # fmt: skip

    root = measuring_with(monkeypatch, tmp_path, fake_timing)  # 4 train and 2 val images
    args = [
        "--config", str(REPO / "configs" / "camvid_cpu.yaml"), f"--data.root={root}", "--data.batch_size=2",
        "--data.crop_size=[32,48]", "--train_minutes=10",
    ]  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer = build_cli(args, run=False).trainer
    # A validation: the 2 val images and BatchNorm recalibrated on the 4 train images (at most 64), 6 s; three of
    # them in 10 minutes, 10% kept aside, leave 522 s for steps of 250 ms (bf16, auto's choice): 2088, at thirds.
    assert trainer.precision == "bf16-mixed" and trainer.max_steps == 2088 and trainer.val_check_interval == 696
    assert re.search(
        r"--train_minutes=10: a training step of 2 x 32x48 in bf16-mixed NCHW takes 250 ms and a validation about 6 s "
        r"\(2 images and 4 for BatchNorm, \d+x\d+ at 1000 ms\) on this CPU, "
        r"so max_steps=2088 \(3 validations, 10% of the time for",
        caplog.text,
    )
    assert build_cli([*args, "--trainer.precision=32"], run=False).trainer.max_steps == 1044  # float32's step: 500 ms
    odd = build_cli([*args, "--train_minutes=1"], run=False).trainer  # (54 - 18) s: 144 steps, validated at thirds
    assert (odd.max_steps, odd.val_check_interval) == (144, 48)
    uneven = build_cli([*args, "--train_minutes=1.01"], run=False).trainer  # 146 steps fit: cut to 3 x 48
    assert (uneven.max_steps, uneven.val_check_interval) == (144, 48)
    squeezed = build_cli([*args, "--train_minutes=0.3"], run=False).trainer  # validations alone overrun: 3 steps
    assert (squeezed.max_steps, squeezed.val_check_interval) == (3, 1)
    with pytest.raises(ConfigError, match="--train_minutes must be > 0; got 0.0"):
        build_cli([*args, "--train_minutes=0"], run=False)
    assert steps_within(1, 60_000) == 1 and steps_within(1, 100, other_ms=90_000) == 1  # never zero steps
    # What the user types is never replaced: a typed max_steps contradicts the minutes, a typed interval stays.
    with pytest.raises(ConfigError, match="--train_minutes sets trainer.max_steps .* give one of them"):
        build_cli([*args, "--trainer.max_steps=10"], run=False)
    typed = build_cli([*args, "--trainer.val_check_interval=100"], run=False).trainer
    assert (typed.max_steps, typed.val_check_interval) == (2088, 100)


def test_a_trainer_built_in_python_has_no_step_to_time_and_says_so(caplog):
    with caplog.at_level(logging.INFO):
        trainer = Trainer(accelerator="cpu", precision="auto", logger=False, enable_checkpointing=False)
    assert trainer.precision == "32-true" and "only a measurement tells" in caplog.text
    assert Trainer(accelerator="cpu", precision="32", logger=False).precision == "32-true"  # given: kept


def test_cached_images_are_the_decoded_files_and_read_only(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    datamodule = CamVidDataModule(root=str(root), batch_size=2, num_workers=0, crop_size=(32, 48), cache_images=True)
    datamodule.setup("fit")
    for split in ("train", "val"):
        dataset = datamodule.datasets[split]
        assert dataset.decoded is not None and len(dataset.decoded) == len(dataset)
        fresh = CamVidDataModule(root=str(root)).dataset(split)
        for index in range(len(dataset)):
            image, mask = dataset.load(index)
            expected_image, expected_mask = fresh.load(index)
            assert np.array_equal(image, expected_image) and np.array_equal(mask, expected_mask)
            assert not image.flags.writeable and not mask.flags.writeable
        item = dataset[0]  # the pipelines run on read-only arrays
        assert item["image"].dtype == torch.float32
    # Too little memory: nothing held, decoded from the files as before.
    dataset = datamodule.dataset("train", train=True)
    assert dataset.hold_in_memory(budget_bytes=1000) == 0 and dataset.decoded is None


def test_cpu_recipe_trains_with_cached_images_in_the_measured_memory_format(tmp_path, monkeypatch):
    root = make_camvid_segnet(tmp_path / "camvid")
    monkeypatch.chdir(tmp_path)
    cli = build_cli([
        "fit", "--config", str(REPO / "configs" / "camvid_cpu.yaml"), f"--data.root={root}", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--data.batch_size=2", "--data.crop_size=[32,48]", "--data.val_batch_size=1",
        "--progress_bar.refresh_rate=0",
    ])  # fmt: skip
    assert cli.trainer.global_step == 2 and "val/mIoU" in cli.trainer.callback_metrics
    assert cli.trainer.precision in ("32-true", "bf16-mixed")  # measured (tests/conftest.py keeps the cache in tmp)
    assert cli.datamodule.datasets["train"].decoded is not None
    weight = cli.model.net.detail_branch.stage1[0].conv.weight
    assert cli.model.measured_channels_last in (True, False)  # channels_last: auto, measured with the precision
    assert weight.is_contiguous(memory_format=torch.channels_last) == cli.model.measured_channels_last
    # Minutes of training are logged with each validation, and the curves script plots them.
    run_dir = Path(cli.trainer.logger.log_dir)
    steps, minutes = metric_history(run_dir, "time/minutes")
    assert steps == [1] and 0 < minutes[0] < 10
    learning_curves = load_benchmark("learning_curves")
    learning_curves.main(["--output", str(tmp_path / "curves.png"), f"recipe={run_dir}"])
    assert read_image(tmp_path / "curves.png").shape[2] == 3


def test_a_fit_validates_in_the_memory_format_its_forward_passes_measure_fastest(tmp_path, monkeypatch, caplog):
    """On the AVX2-only Zen 3 a training step ran 1.12x faster in NCHW and a forward pass of 4 val images 1.31x
    faster in channels-last: with channels_last=auto a fit trains in the one and validates in the other."""

    def fake_timing(steps, **_):  # training: NCHW 1.2x faster; forward passes: channels-last 1.4x; bf16 5x slower
        seconds = {}
        for name, step in steps.items():
            channels_last = "channels-last" in name
            seconds[name] = 0.3 * (1.2 if channels_last else 1) if step.train else 1.0 / (1.4 if channels_last else 1)
            seconds[name] *= 5 if "bf16" in name else 1
        return seconds

    root = measuring_with(monkeypatch, tmp_path, fake_timing)
    formats = []

    def recording(method, stage):
        def step(module, batch, *args, **kwargs):
            weight = module.net.detail_branch.stage1[0].conv.weight
            formats.append((stage, weight.is_contiguous(memory_format=torch.channels_last)))
            return method(module, batch, *args, **kwargs)

        return step

    for name in ("training_step", "validation_step"):
        monkeypatch.setattr(SegmentationModule, name, recording(getattr(SegmentationModule, name), name[:-5]))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        cli = build_cli([
            "fit", "--config", str(REPO / "configs" / "camvid_cpu.yaml"), f"--data.root={root}",
            "--trainer.max_steps=4", "--trainer.val_check_interval=2", "--data.batch_size=2",
            "--data.crop_size=[32,48]", "--data.val_batch_size=1", "--progress_bar.refresh_rate=0",
        ])  # fmt: skip
    assert (cli.model.measured_channels_last, cli.model.measured_eval_channels_last) == (False, True)
    assert re.search(r"model.channels_last=auto, validating: 32-true channels-last, the fastest for a forward pass "
                     r"of BiSeNetV2 \(1 x \d+x\d+\)", caplog.text)  # fmt: skip
    sanity = [fmt for stage, fmt in formats[:2]]  # Lightning's sanity check validates before training
    later = formats[2:]
    assert sanity == [True, True] and {fmt for stage, fmt in later if stage == "training"} == {False}
    assert [fmt for stage, fmt in later if stage == "validation"] == [True] * 4  # 2 val images, twice
    assert not cli.model.net.detail_branch.stage1[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert cli.trainer.global_step == 4 and "val/mIoU" in cli.trainer.callback_metrics


def test_freed_memory_is_kept_unless_the_user_chose_an_allocator():
    assert user_chose_allocator({}) is None
    assert user_chose_allocator({"BISENET_PL_ALLOCATOR": "System"}) == "BISENET_PL_ALLOCATOR"
    assert user_chose_allocator({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD"
    assert user_chose_allocator({"MALLOC_TRIM_THRESHOLD_": "0"}) == "MALLOC_TRIM_THRESHOLD_"
    assert user_chose_allocator({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1"}) == "GLIBC_TUNABLES"
    code = "from bisenet_pl.allocator import keep_freed_memory as keep; print(keep(), keep())"
    environment = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS and k != "BISENET_PL_ALLOCATOR"}
    chosen = subprocess.run(
        [sys.executable, "-c", code], env={**environment, "BISENET_PL_ALLOCATOR": "system"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert chosen.stdout.split() == ["False", "False"]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        default = subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True)
        assert default.stdout.split() == ["True", "True"]  # set once, then a no-op
