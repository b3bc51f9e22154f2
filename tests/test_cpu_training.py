"""The CPU recipe's parts: precision chosen from what the CPU computes natively, decoded images
held in memory, and configs/camvid_cpu.yaml using both."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from synthetic import make_camvid_segnet

from bisenet_pl.cli import build_cli
from bisenet_pl.data import CamVidDataModule
from bisenet_pl.data.io import read_image
from bisenet_pl.results import metric_history
from bisenet_pl.trainer import Trainer, auto_precision, native_bf16_feature

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(True, True, ("bf16-mixed", "AMX")), (False, True, ("bf16-mixed", "AVX512_BF16")), (False, False, ("32-true", "emulated"))],
)
def test_auto_precision_follows_the_cpu(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    precision, reason = auto_precision("cpu")
    assert precision == expected[0] and expected[1] in reason


def test_trainer_auto_precision_says_what_it_chose(caplog):
    with caplog.at_level(logging.INFO):
        trainer = Trainer(accelerator="cpu", precision="auto", logger=False, enable_checkpointing=False)
    chosen = "bf16-mixed" if native_bf16_feature() else "32-true"
    assert trainer.precision == chosen
    assert f"trainer.precision=auto: {chosen}, because this CPU" in caplog.text
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


def test_cpu_recipe_trains_with_cached_images_and_channels_last(tmp_path, monkeypatch):
    root = make_camvid_segnet(tmp_path / "camvid")
    monkeypatch.chdir(tmp_path)
    cli = build_cli([
        "fit", "--config", str(REPO / "configs" / "camvid_cpu.yaml"), f"--data.root={root}", "--trainer.max_steps=2",
        "--trainer.val_check_interval=2", "--data.batch_size=2", "--data.crop_size=[32,48]", "--data.val_batch_size=1",
        "--progress_bar.refresh_rate=0",
    ])  # fmt: skip
    assert cli.trainer.global_step == 2 and "val/mIoU" in cli.trainer.callback_metrics
    assert cli.trainer.precision == auto_precision("cpu")[0]
    assert cli.datamodule.datasets["train"].decoded is not None
    weight = cli.model.net.detail_branch.stage1[0].conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    # Minutes of training are logged with each validation, and the curves script plots them.
    run_dir = Path(cli.trainer.logger.log_dir)
    steps, minutes = metric_history(run_dir, "time/minutes")
    assert steps == [1] and 0 < minutes[0] < 10
    learning_curves = load_benchmark("learning_curves")
    learning_curves.main(["--output", str(tmp_path / "curves.png"), f"recipe={run_dir}"])
    assert read_image(tmp_path / "curves.png").shape[2] == 3


