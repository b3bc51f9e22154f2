"""Experiment tracking: W&B offline runs, the default CSV logger, validation pictures, config saving."""

import json
from pathlib import Path

import numpy as np
import wandb
from synthetic import make_camvid_segnet
from wandb_records import history, read_finished_run

from bisenet_pl.cli import main
from bisenet_pl.visualize import colorize, confusion_matrix_figure, error_map, figure_to_array, sample_panel

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32",
    "--data.batch_size=2", "--data.num_workers=0", "--data.crop_size=[32,48]", "--data.val_batch_size=1",
    "--progress_bar.refresh_rate=0", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
    "--trainer.log_every_n_steps=1", "--val_images.num_samples=2",
]  # fmt: skip


def test_wandb_offline_runs_hold_metrics_images_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    root = make_camvid_segnet(tmp_path / "camvid")
    args = [
        "fit", "--config", str(REPO / "configs" / "camvid.yaml"), "--config", str(REPO / "configs" / "wandb.yaml"),
        f"--data.root={root}", *TINY, f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'wandb'}", "--trainer.logger.init_args.group=ablation",
        "--trainer.logger.init_args.tags=[camvid,test]",
    ]  # fmt: skip
    for run in range(2):  # a second run beside the first: no config clash, each run its own config
        main([*args, f"--model.optimizer.lr={0.01 * (run + 1)}"])
        wandb.finish()  # a notebook or test process would otherwise reuse the run
    runs = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    for run, lr in zip(runs, ("0.01", "0.02")):
        files = run / "files"
        config = (files / "cli_config.yaml").read_text()
        assert f"lr: {lr}" in config and "class_path: bisenet_pl.data.CamVidDataModule" in config
        assert "group: ablation" in config
        records = read_finished_run(next(run.glob("run-*.wandb")))
        logged = set().union(*history(records))
        assert {"val/mIoU", "val/pixel_accuracy", "val/IoU/Sky", "train/loss", "trainer/global_step"} <= logged
        assert any(key.startswith("lr-SGD") for key in logged)  # learning rates, per parameter group
        assert {"val/samples/all_masks", "val/confusion_matrix/filenames"} <= logged
        samples = next(row for row in history(records) if "val/samples/all_masks" in row)
        masks = json.loads(samples["val/samples/all_masks"])
        assert len(masks) == 2 and set(masks[0]) == {"ground_truth", "prediction"}
        assert all((files / m["ground_truth"]["path"]).is_file() for m in masks)
        wandb_config = [
            item.value_json
            for r in records
            if r.WhichOneof("record_type") == "config"
            for item in r.config.update
            if item.key == "_wandb"
        ]
        class_labels = json.loads(wandb_config[-1])["mask/class_labels"]  # W&B keeps mask labels in the run config
        assert {"0": "Sky", "10": "Bicyclist", "255": "ignore"}.items() <= next(iter(class_labels.values()))[
            "value"
        ].items()
        assert len(list((files / "media" / "images").rglob("*.png"))) >= 2 + 2 * 2 + 1
        # The run summary keeps the best val/mIoU, which a sweep optimises.
        summaries = {r.metric.name: r.metric.summary for r in records if r.WhichOneof("record_type") == "metric"}
        assert summaries["val/mIoU"].max
        run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        assert list(run_record.tags) == ["camvid", "test"]
        config_keys = {item.key for r in records if r.WhichOneof("record_type") == "config" for item in r.config.update}
        assert {"model", "data", "trainer"} <= config_keys
    # Checkpoints of a W&B run live under its save_dir, where --ckpt_path last finds them.
    assert len(list((tmp_path / "wandb").rglob("last.ckpt"))) == 2


def test_default_logger_gets_config_and_pictures(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    out = tmp_path / "out"
    args = ["fit", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}", *TINY,
            f"--trainer.default_root_dir={out}",]  # fmt: skip
    main(args)
    main(args)
    versions = sorted((out / "lightning_logs").glob("version_*"))
    assert [v.name for v in versions] == ["version_0", "version_1"]
    for version in versions:
        assert "class_path: bisenet_pl.models.BiSeNetV2" in (version / "config.yaml").read_text()
        assert len(list((version / "images" / "val_samples").glob("step_000002_*.png"))) == 2
        assert (version / "images" / "val_confusion_matrix" / "step_000002_0.png").is_file()
        assert "val/mIoU" in (version / "metrics.csv").read_text().splitlines()[0]


def test_pictures():
    palette = [(10, 20, 30), (200, 100, 0)]
    mask = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    colours = colorize(mask, palette)
    assert colours[0, 0].tolist() == [10, 20, 30] and colours[0, 1].tolist() == [200, 100, 0]
    assert colours[1, 0].tolist() == [0, 0, 0]  # ignored
    errors = error_map(np.array([[0, 0], [0, 1]]), mask, ignore_index=255)
    assert errors[0, 0].tolist() != errors[0, 1].tolist() and errors[1, 0].tolist() == [255, 255, 255]
    image = np.full((2, 2, 3), 128, dtype=np.uint8)
    assert sample_panel(image, mask, mask, palette, 255).shape == (2, 8, 3)
    figure = confusion_matrix_figure(np.array([[3, 1], [0, 0]]), ["a", "b"])  # a class never present: no NaN
    array = figure_to_array(figure)
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8 and array.std() > 0


def test_no_logger_means_no_pictures(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    main(["fit", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}", *TINY,
    "--trainer.logger=false",
          f"--trainer.default_root_dir={tmp_path / 'out'}", "--trainer.enable_checkpointing=false"])  # fmt: skip
    assert not [path for path in tmp_path.rglob("*") if path.is_file() and root not in path.parents]
