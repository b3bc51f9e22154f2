"""The ``bisenet-pl`` command: the console script as a user runs it (fit, DDP, a shell error), the rest in-process."""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference_state_dict
from synthetic import make_camvid_segnet, make_cityscapes, make_folder, write_gray

from bisenet_pl.cli import build_cli, main
from bisenet_pl.models import BiSeNetV2, ResNet
from bisenet_pl.models.resnet import IMAGENET_URLS
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).with_name("bisenet-pl")
CPU = [
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32",
    "--data.batch_size=2", "--data.num_workers=0", "--data.crop_size=[32,48]", "--data.val_batch_size=1",
    "--progress_bar.refresh_rate=0",
]  # fmt: skip
DATASETS = {
    "camvid.yaml": make_camvid_segnet,
    "camvid_bisenetv1.yaml": make_camvid_segnet,
    "cityscapes.yaml": make_cityscapes,
    "cityscapes_bisenetv1.yaml": make_cityscapes,
    "camvid_cpu.yaml": make_camvid_segnet,
    "folder.yaml": lambda root: make_folder(root, num_classes=2, ignore_value=255),
}


def run(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = os.environ | {"WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"} | (env or {})
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture
def imagenet_cache(tmp_path, monkeypatch):
    """A torch.hub cache already holding 'torchvision's ResNet-18', so nothing is downloaded."""
    torch_home = tmp_path / "torch_home"
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    state = ResNet("resnet18").state_dict() | {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    torch.save(state, checkpoints / IMAGENET_URLS["resnet18"].rsplit("/", 1)[1])
    monkeypatch.setenv("TORCH_HOME", str(torch_home))  # for in-process runs
    return {"TORCH_HOME": str(torch_home)}


#: Configs added after a main one (tested in test_logging).
FRAGMENTS = ["wandb.yaml", "camvid_cpu_finish.yaml"]


def test_configs_are_the_documented_set():
    assert sorted(p.name for p in (REPO / "configs").glob("*.yaml")) == sorted([*DATASETS, *FRAGMENTS])


@pytest.mark.parametrize("config", sorted(DATASETS))
def test_every_config_fits(tmp_path, config, imagenet_cache, monkeypatch):
    root = DATASETS[config](tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    cli = build_cli(
        ["fit", "--config", str(REPO / "configs" / config), f"--data.root={root}", "--trainer.fast_dev_run=true", *CPU]
    )
    assert cli.trainer.state.finished and cli.trainer.global_step == 1


def test_the_finish_config_continues_a_recipe_run_on_whole_frames(tmp_path, caplog):
    """configs/camvid_cpu_finish.yaml after the CPU recipe: the run's weights, 2 crops of 360x480, lr 5e-4."""
    recipe = [
        "--config",
        str(REPO / "configs" / "camvid_cpu.yaml"),
        f"--data.root={make_camvid_segnet(tmp_path / 'camvid')}",
    ]
    build_cli(["fit", *recipe, *CPU, "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path / 'recipe'}"])
    last = next((tmp_path / "recipe").rglob("last.ckpt"))
    # The finish's own crop and batch, not the tiny ones the other tests train on.
    whole_frames = [option for option in CPU if not option.startswith(("--data.crop_size", "--data.batch_size"))]
    whole_frames.append("--model.channels_last=false")  # not the memory format's measurement at 360x480
    caplog.set_level(logging.INFO)
    finish = build_cli([
        "fit", *recipe, "--config", str(REPO / "configs" / "camvid_cpu_finish.yaml"), f"--model.pretrained={last}",
        *whole_frames, "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
        f"--trainer.default_root_dir={tmp_path / 'finish'}",
    ])  # fmt: skip
    assert f"Loaded pretrained weights from {last}" in caplog.text
    assert finish.trainer.global_step == 1 and finish.model.optimizer_options.lr == 0.0005
    batch = next(iter(finish.datamodule.train_dataloader()))
    assert batch["image"].shape == (2, 3, 360, 480)


def test_fit_then_test_prints_per_class_iou(tmp_path, capsys):
    root = make_camvid_segnet(tmp_path / "camvid")
    config = str(REPO / "configs" / "camvid.yaml")
    common = [
        f"--data.root={root}",
        *CPU,
        f"--trainer.default_root_dir={tmp_path / 'out'}",
    ]
    fitted = run(
        "fit", "--config", config, *common, "--trainer.max_steps=2", "--trainer.val_check_interval=2", cwd=tmp_path
    )
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    checkpoints = sorted((tmp_path / "out").rglob("*.ckpt"))
    assert {p.name for p in checkpoints} >= {"last.ckpt"} and any(p.name.startswith("best-") for p in checkpoints)
    hparams = next((tmp_path / "out").rglob("hparams.yaml")).read_text()
    assert "num_classes: 11" in hparams and "ignore_index: 255" in hparams  # linked from the DataModule
    assert "Validation at step 2: mIoU" in fitted.stdout
    last = str(next(p for p in checkpoints if p.name == "last.ckpt"))
    # Checkpoints hold plain data: they load with torch.load(weights_only=True).
    assert "state_dict" in torch.load(last, map_location="cpu", weights_only=True)
    # A notebook can rebuild the trained model from the checkpoint alone.
    loaded = SegmentationModule.load_from_checkpoint(last, map_location="cpu")
    assert isinstance(loaded.net, BiSeNetV2) and loaded.num_classes == 11 and loaded.class_names[0] == "Sky"
    # Test and validate in this process (the console script itself is exercised by fit above).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", append=True)  # every warning that no filter hides, even one seen before
        main(["test", "--config", config, *common, f"--ckpt_path={last}"])
    # The test's logger folder is a new version: Lightning's note that the checkpoint was written elsewhere
    # (and so its best scores are not restored) concerns resuming a fit only.
    assert not [str(w.message) for w in caught if "dirpath has changed" in str(w.message)]
    tested = capsys.readouterr().out
    for name in ("Sky", "Bicyclist", "mIoU", "pixel accuracy"):
        assert name in tested
    main(["validate", "--config", config, *common, f"--ckpt_path={last}", "--data.test_split=val"])
    assert "val/mIoU" in capsys.readouterr().out


def test_help_and_print_config(tmp_path, capsys):
    with pytest.raises(SystemExit) as helped:
        main(["--help"])
    output = capsys.readouterr().out
    assert helped.value.code == 0 and "fit" in output and "bisenet-pl stats" in output and "bisenet-pl export" in output
    with pytest.raises(SystemExit) as printed:
        main(["fit", "--config", str(REPO / "configs" / "camvid.yaml"), "--data.batch_size=8", "--print_config"])
    output = capsys.readouterr().out
    assert printed.value.code == 0
    assert "class_path: bisenet_pl.data.CamVidDataModule" in output and "batch_size: 8" in output


def test_missing_data_is_one_clear_line_in_the_shell(tmp_path):
    missing = run(
        "fit",
        "--config",
        str(REPO / "configs" / "camvid.yaml"),
        f"--data.root={tmp_path / 'nowhere'}",
        *CPU,
        cwd=tmp_path,
    )
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr  # Lightning's info lines, then the one error line
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .startswith(f"bisenet-pl: error: CamVid not found at {tmp_path / 'nowhere'}")
    )


def test_stats_command(tmp_path, capsys):
    root = make_camvid_segnet(tmp_path / "camvid")
    main(["stats", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}", "--split", "val"])
    output = capsys.readouterr().out
    assert "images: 2" in output and "Bicyclist" in output and "class_weights" in output


def test_a_config_that_is_not_a_mapping_is_one_line(tmp_path):
    for name, text in (("notes.txt", "hi\n"), ("list.yaml", "- data\n- model\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit, match=f"{name} has no data: section with a class_path"):
            main(["stats", "--config", str(tmp_path / name)])  # was AttributeError: 'str' object has no 'get'


def test_convert_command(tmp_path, reference_dir):
    torch.save(reference_state_dict(reference_dir / "bisenetv2_state_dict_keys.tsv"), tmp_path / "reference.pth")
    main(["convert", str(tmp_path / "reference.pth"), str(tmp_path / "ours.pth")])
    BiSeNetV2(num_classes=19).load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True), strict=True)
    # Never over its own input, nor to a folder's path: refused before anything is read or written.
    reference = (tmp_path / "reference.pth").read_bytes()
    (tmp_path / "folder").mkdir()
    for output, message in ((tmp_path / "reference.pth", "is the input"), (tmp_path / "folder", "is a folder")):
        with pytest.raises(SystemExit, match=f"convert: output {output} {message}"):
            main(["convert", str(tmp_path / "reference.pth"), str(output)])
    assert (tmp_path / "reference.pth").read_bytes() == reference and not any((tmp_path / "folder").iterdir())


def test_corrupt_label_in_a_worker_is_one_clear_line(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    label = sorted((root / "trainannot").iterdir())[1]
    write_gray(label, np.full((48, 64), 40))
    args = [a for a in CPU if not a.startswith("--data.num_workers")] + ["--data.num_workers=1"]
    with pytest.raises(SystemExit) as error:
        main(
            [
                "fit",
                "--config",
                str(REPO / "configs" / "camvid.yaml"),
                f"--data.root={root}",
                "--trainer.max_steps=4",
                *args,
            ]
        )
    assert (
        error.value.code
        == f"bisenet-pl: error: label {label} holds values [40] that are neither classes (0..10) nor void ([11])"
    )


def _logged(output: str, key: str) -> float:
    row = next(line for line in output.splitlines() if f" {key} " in line)
    return float(row.split("│")[2])


@pytest.mark.slow
def test_two_process_ddp_validation_equals_one_process(tmp_path):
    # 5 val images over 2 processes: padding would count one of them twice.
    root = make_camvid_segnet(tmp_path / "camvid", {"train": 8, "val": 5, "test": 1})
    config = str(REPO / "configs" / "camvid.yaml")
    out = [f"--trainer.default_root_dir={tmp_path / 'out'}"]
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    cpu = [a for a in CPU if not a.startswith(("--trainer.devices", "--trainer.strategy"))]
    fitted = run(
        "fit",
        "--config",
        config,
        f"--data.root={root}",
        *cpu,
        *ddp,
        *out,
        "--trainer.max_steps=3",
        "--trainer.val_check_interval=3",
        cwd=tmp_path,
    )
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    assert "Validation at step 3: mIoU" in fitted.stdout
    last = str(next((tmp_path / "out").rglob("last.ckpt")))
    scores = {}
    for name, devices in {"one": ["--trainer.devices=1"], "two": ddp}.items():
        result = run(
            "validate",
            "--config",
            config,
            f"--data.root={root}",
            *cpu,
            *devices,
            f"--ckpt_path={last}",
            "--trainer.logger=false",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        scores[name] = {key: _logged(result.stdout, key) for key in ("val/mIoU", "val/pixel_accuracy", "val/IoU/Sky")}
    assert scores["one"] == pytest.approx(scores["two"], abs=1e-6)


def test_options_given_with_ckpt_path_win_over_the_checkpoint(tmp_path, monkeypatch):
    """Lightning lays a checkpoint's hyperparameters over the parsed command line; what the
    user typed must win, and the network's shape must still come from the checkpoint."""
    root = make_camvid_segnet(tmp_path / "camvid")
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / "camvid.yaml")
    trained = build_cli(
        ["fit", "--config", config, f"--data.root={root}", *CPU, "--trainer.fast_dev_run=true",
         "--model.net.init_args.aggregation=sum", "--model.evaluation.mode=ssc", "--model.loss.ohem_threshold=0.6"]
    )  # fmt: skip
    checkpoint = tmp_path / "trained.ckpt"
    trained.trainer.save_checkpoint(checkpoint)
    common = ["--config", config, f"--data.root={root}", *CPU, f"--ckpt_path={checkpoint}"]
    common += ["--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]
    typed = build_cli(["validate", *common, "--model.evaluation.mode=msf", "--model.evaluation.scales=[0.5,1.0]"])
    assert typed.model.evaluation.mode == "msf" and typed.model.evaluation.scales == (0.5, 1.0)
    assert (
        type(typed.model.net.aggregation).__name__
        == type(trained.model.net.aggregation).__name__
        != "BilateralGuidedAggregation"
    )  # the network as trained, though camvid.yaml names the default
    assert typed.model.loss_options.ohem_threshold == 0.6  # not typed: the checkpoint's value
    untyped = build_cli(["test", *common])
    assert untyped.model.evaluation.mode == "ssc"
    with pytest.raises(SystemExit, match="model.evaluation.scales must be positive numbers"):
        main(["validate", *common, "--model.evaluation.scales=[0,-1]"])
