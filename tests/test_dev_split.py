"""The dev split: whole sequences (or files by pattern) held out of training and validated beside val."""

from pathlib import Path

import pytest
from conftest import load_benchmark
from synthetic import make_camvid_segnet, make_folder

from bisenet_pl import precision as precision_module
from bisenet_pl.cli import build_cli
from bisenet_pl.data import CamVidDataModule, DataError, FolderDataModule
from bisenet_pl.data.io import read_image
from bisenet_pl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SEQUENCES = ("0001TP", "0006R0", "0016E5")


@pytest.fixture
def camvid_sequences(tmp_path):
    return make_camvid_segnet(tmp_path / "camvid", {"train": 9, "val": 2, "test": 2}, sequences=SEQUENCES)


def names(samples):
    return [image.name for image, _ in samples]


def test_dev_sequences_move_whole_sequences_out_of_training(camvid_sequences):
    every = names(CamVidDataModule(root=str(camvid_sequences)).samples("train"))
    dm = CamVidDataModule(root=str(camvid_sequences), dev_sequences=["0006R0"])
    train, dev = names(dm.split_samples("train")), names(dm.split_samples("dev"))
    assert dev == [name for name in every if name.startswith("0006R0_")] and len(dev) == 3
    assert not any(name.startswith("0006R0_") for name in train)
    assert sorted(train + dev) == sorted(every) and not set(train) & set(dev)  # each image once, no leak
    assert names(dm.split_samples("val")) == names(CamVidDataModule(root=str(camvid_sequences)).samples("val"))
    assert dm.val_splits == ["val", "dev"] and CamVidDataModule(root=str(camvid_sequences)).val_splits == ["val"]
    # Two sequences out (a fold of leave-some-out), given as patterns instead.
    two = CamVidDataModule(root=str(camvid_sequences), dev_files=["0001TP_*", "0016E5_*"])
    assert {name[:6] for name in names(two.split_samples("train"))} == {"0006R0"}
    assert len(two.split_samples("dev")) == 6


def test_setup_gives_the_training_loader_no_dev_image_and_validates_on_both(camvid_sequences):
    dm = CamVidDataModule(
        root=str(camvid_sequences), dev_sequences=["0016E5"], batch_size=2, num_workers=0, crop_size=(32, 48)
    )
    dm.setup("fit")
    assert not any(image.name.startswith("0016E5_") for image, _ in dm.datasets["train"].samples)
    val, dev = dm.val_dataloader()
    assert len(val.dataset) == 2 and names(dev.dataset.samples) == names(dm.split_samples("dev"))
    batch = next(iter(dev))
    assert all("0016E5_" in path for path in batch["path"]) and batch["image"].shape[-2:] == (48, 64)  # whole images


def test_folder_dev_files_by_pattern(tmp_path):
    root = make_folder(tmp_path / "folder", num_classes=3, counts={"train": 6, "val": 2})
    dm = FolderDataModule(root=str(root), num_classes=3, dev_files=["img1.*", "img4*"])
    assert names(dm.split_samples("dev")) == ["img1.jpg", "img4.jpg"]
    assert names(dm.split_samples("train")) == ["img0.jpg", "img2.jpg", "img3.jpg", "img5.jpg"]


def test_dev_options_that_cannot_work_are_refused_in_words(camvid_sequences):
    with pytest.raises(DataError,
    match=r"dev_sequences=\['0006R1'\] \(the training sequences: 0001TP, 0006R0, 0016E5\): "
                       r"'0006R1_\*' matches none of the 9 training images"):  # fmt: skip
        CamVidDataModule(root=str(camvid_sequences), dev_sequences=["0006R1"]).split_samples("train")
    with pytest.raises(
        DataError, match=r"data.dev_files=\['\*'\] holds out all 9 training images; nothing is left to train on"
    ):
        CamVidDataModule(root=str(camvid_sequences), dev_files=["*"]).split_samples("train")
    with pytest.raises(ConfigError, match="give data.dev_sequences or data.dev_files, not both"):
        CamVidDataModule(root=str(camvid_sequences), dev_sequences=["0006R0"], dev_files=["0001TP_*"])
    with pytest.raises(DataError, match="there is no dev split: choose its training images with data.dev_files"):
        CamVidDataModule(root=str(camvid_sequences), test_split="dev").split_samples("dev")


def test_a_dev_split_that_cannot_work_is_refused_before_anything_is_measured(camvid_sequences, tmp_path, monkeypatch):
    """precision=auto times training steps for up to 20 s: a typo in data options is said before that."""
    measured = []
    monkeypatch.setenv("BISENET_PL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "time_alternately", lambda steps, **_: measured.append(1) or {})
    with pytest.raises(DataError, match=r"'0006R1_\*' matches none of the 9 training images"):
        build_cli([
            "fit", "--config=configs/camvid_cpu.yaml", f"--data.root={camvid_sequences}", "--trainer.precision=auto",
            "--data.dev_sequences=[0006R1]", f"--trainer.default_root_dir={tmp_path / 'out'}",
        ])  # fmt: skip
    assert not measured and not (tmp_path / "out").exists()


def test_fit_logs_val_and_dev_and_test_scores_the_dev_split(camvid_sequences, tmp_path, capsys):
    out = tmp_path / "out"
    common = [
        "--config=configs/camvid_cpu.yaml", f"--data.root={camvid_sequences}", "--data.dev_sequences=[0006R0]",
        "--data.batch_size=2", "--data.crop_size=[32,48]", "--trainer.precision=32", "--progress_bar.refresh_rate=0",
    ]  # fmt: skip
    build_cli(["fit", *common, "--trainer.max_steps=2", "--trainer.val_check_interval=2",
    f"--trainer.default_root_dir={out}", "--checkpoint.monitor=dev/mIoU"])  # fmt: skip
    printed = capsys.readouterr().out
    line = next(line for line in printed.splitlines() if line.startswith("Validation at step 2: mIoU"))
    assert " on val; mIoU " in line and line.endswith(" on dev")
    header = next(out.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"val/mIoU", "dev/mIoU", "dev/IoU/Sky", "dev/loss", "val/loss"} <= set(header)
    assert not any("dataloader_idx" in column for column in header)
    best = next(out.rglob("best-*.ckpt"))  # chosen on dev/mIoU
    cli = build_cli(["test", *common, f"--ckpt_path={best}", "--data.test_split=dev", "--trainer.logger=false"])
    assert "test/mIoU" in cli.trainer.callback_metrics


def test_train_splits_train_on_train_and_val_for_a_release(camvid_sequences):
    every = names(CamVidDataModule(root=str(camvid_sequences)).samples("train"))
    val = names(CamVidDataModule(root=str(camvid_sequences)).samples("val"))
    both = CamVidDataModule(root=str(camvid_sequences), train_splits=["train", "val"], batch_size=2, crop_size=(32, 48))
    assert names(both.split_samples("train")) == every + val
    with pytest.warns(UserWarning, match=r"val is trained on, so its scores measure fit"):
        both.setup("fit")
    assert len(both.datasets["train"]) == len(every) + len(val)
    # The dev split still comes out of all of them, and only out of them.
    held = CamVidDataModule(root=str(camvid_sequences), train_splits=["train", "val"], dev_sequences=["0006R0"])
    train, dev = names(held.split_samples("train")), names(held.split_samples("dev"))
    assert dev == [name for name in every + val if name.startswith("0006R0_")] and any(name in val for name in dev)
    assert sorted(train + dev) == sorted(every + val) and not set(train) & set(dev)


def test_train_splits_that_cannot_work_are_refused_in_words(camvid_sequences):
    root = str(camvid_sequences)
    with pytest.raises(
        ConfigError,
        match=r"data.train_splits must be a list of distinct splits that includes train, e.g. \[train, val\]; got "
        r"\['val'\]",
    ):
        CamVidDataModule(root=root, train_splits=["val"])
    with pytest.raises(
        ConfigError, match=r"includes data.test_split=test: the model would be tested on images it trained on"
    ):
        CamVidDataModule(root=root, train_splits=["train", "test"])


def test_learning_curves_plot_val_and_dev_of_a_committed_run(tmp_path, capsys):
    run = REPO / "results" / "recipe_study_1000" / "baseline_seed42"
    load_benchmark("learning_curves").main(
        [f"baseline={run}", "--output", str(tmp_path / "curves.png"), "--metric", "val/mIoU", "dev/mIoU"]
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| baseline |")]
    assert [row.split(" | ")[1] for row in rows] == ["val/mIoU", "dev/mIoU"]
    assert rows[1].split(" | ")[4] == "34.45"  # the README's recipe-study baseline, dev at step 1000
    assert read_image(tmp_path / "curves.png").shape[2] == 3
    sweep_run = REPO / "results" / "cpu_study_3000" / "net=BiSeNetV2_seed42"  # a folder name with "=" in it
    load_benchmark("learning_curves").main([f"recipe={sweep_run}", "--output", str(tmp_path / "sweep.png")])
    assert "| recipe | val/mIoU | 2999 |" in capsys.readouterr().out
