"""The released CamVid weights (weights/bisenetv2_camvid.pt): the file, every way to load it, and
that it still segments real CamVid as it did when released."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import CAMVID_DIR, load_benchmark

from bisenet_pl.cli import build_cli, main
from bisenet_pl.data import CAMVID_CLASSES, CamVidDataModule
from bisenet_pl.data.camvid import CAMVID_MEAN, CAMVID_PALETTE, CAMVID_STD
from bisenet_pl.data.io import read_image
from bisenet_pl.evaluation import EvaluationProtocol, class_scores
from bisenet_pl.models import BiSeNetV2
from bisenet_pl.models.weights import WEIGHTS_FORMAT, read_weights_info, released_weights_path
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights" / "bisenetv2_camvid.pt"
#: Val images the guard scores, and their pixel accuracy (%) when the weights were released.
GUARD_IMAGES = (0, 25, 50, 75)
RELEASED_PIXEL_ACCURACY = 96.15


def test_the_file_holds_float16_weights_of_bisenetv2_without_aux_heads():
    assert WEIGHTS.stat().st_size <= 8 * 2**20
    stored = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert stored["format"] == WEIGHTS_FORMAT
    state = stored["state_dict"]
    expected = {k: v for k, v in BiSeNetV2(num_classes=11).state_dict().items() if not k.startswith("aux_heads.")}
    assert state.keys() == expected.keys()
    assert all(state[k].shape == v.shape for k, v in expected.items())
    assert {v.dtype for k, v in state.items() if not k.endswith("num_batches_tracked")} == {torch.float16}
    info = read_weights_info(WEIGHTS)
    assert info.network["class_path"] == "bisenet_pl.models.BiSeNetV2" and info.num_classes == 11
    assert info.class_names == list(CAMVID_CLASSES) and info.ignore_index == 255
    assert (
        info.mean == list(CAMVID_MEAN)
        and info.std == list(CAMVID_STD)
        and info.palette == [list(c) for c in CAMVID_PALETTE]
    )
    assert released_weights_path("bisenetv2_camvid").samefile(WEIGHTS)  # the package data is this file


def test_one_call_in_python_loads_them_by_name_or_path():
    by_name = SegmentationModule.from_pretrained("bisenetv2_camvid")
    by_path = SegmentationModule.from_pretrained(WEIGHTS, evaluation=EvaluationProtocol("msf"))
    assert not by_name.training and isinstance(by_name.net, BiSeNetV2) and len(by_name.net.aux_heads) == 0
    assert by_name.class_names == list(CAMVID_CLASSES) and by_path.evaluation.mode == "msf"
    stored = torch.load(WEIGHTS, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in by_name.net.state_dict().items():
        assert torch.equal(value, stored[key].to(value.dtype)), key
        assert torch.equal(by_path.net.state_dict()[key], value)


def released_state() -> dict[str, torch.Tensor]:
    return torch.load(WEIGHTS, map_location="cpu", weights_only=True)["state_dict"]


def assert_network_holds_released_weights(net: torch.nn.Module) -> None:
    stored = released_state()
    own = net.state_dict()
    assert all(torch.equal(own[k], v.to(own[k].dtype)) for k, v in stored.items())


def cli_args(subcommand: str, camvid: Path, tmp_path: Path) -> list[str]:
    return [
        subcommand, "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}",
        f"--model.pretrained={WEIGHTS}", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.precision=32", "--data.num_workers=0", "--progress_bar.refresh_rate=0",
        "--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}",
    ]  # fmt: skip


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_every_evaluation_subcommand_runs_on_them(subcommand, camvid, tmp_path):
    extra = [f"--prediction_writer.output_dir={tmp_path / 'predictions'}"] if subcommand == "predict" else []
    cli = build_cli(cli_args(subcommand, camvid, tmp_path) + extra)
    assert_network_holds_released_weights(cli.model.net)
    if subcommand == "predict":
        assert len(list((tmp_path / "predictions" / "colour").rglob("*.png"))) == 2


def test_fit_fine_tunes_from_them(camvid, tmp_path):
    cli = build_cli(cli_args("fit", camvid, tmp_path) + [
        "--data.crop_size=[32,48]", "--data.batch_size=2", "--trainer.max_steps=1", "--trainer.limit_val_batches=0",
        "--trainer.enable_checkpointing=false",
    ])  # fmt: skip
    stored = released_state()
    # One step moved the network away from the weights it started from, which it had loaded.
    changed = [
        k for k, v in cli.model.net.state_dict().items() if k in stored and not torch.equal(v, stored[k].to(v.dtype))
    ]
    assert changed and len(cli.model.net.aux_heads) == 4  # the aux heads are new, trained from scratch


def test_export_takes_them_and_writes_onnx(tmp_path, capsys):
    output = tmp_path / "camvid.onnx"
    main(["export", f"--model.pretrained={WEIGHTS}", "--format", "onnx", "--size", "64", "96", "--output", str(output)])
    assert output.is_file() and "BiSeNetV2, 11 classes" in capsys.readouterr().out


def test_the_installed_package_carries_them(tmp_path):
    """A wheel built from the repository holds the weights as package data, and they load by name
    from that installation, anywhere, with no repository around."""
    source = tmp_path / "source"
    for part in ("pyproject.toml", "README.md", "bisenet_pl", "weights"):
        target = source / part
        if (REPO / part).is_dir():
            subprocess.run(["cp", "-r", str(REPO / part), str(target)], check=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((REPO / part).read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("bisenet_pl-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "bisenet_pl/weights/bisenetv2_camvid.pt" in archive.namelist()
        archive.extractall(tmp_path / "site")
    code = (
        "import bisenet_pl; from bisenet_pl.module import SegmentationModule; "
        "m = SegmentationModule.from_pretrained('bisenetv2_camvid'); print(bisenet_pl.__file__, m.num_classes)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    installed, classes = result.stdout.split()
    assert installed.startswith(str(tmp_path / "site")) and classes == "11"


@pytest.mark.skipif(not (CAMVID_DIR / "valannot").is_dir(), reason=f"no CamVid at {CAMVID_DIR}")
def test_they_segment_real_camvid_val_images_as_released():
    model = SegmentationModule.from_pretrained("bisenetv2_camvid")
    val = CamVidDataModule(root=str(CAMVID_DIR)).dataset("val")
    correct = labelled = 0
    for index in GUARD_IMAGES:
        item = val[index]
        prediction = class_scores(model.net, item["image"][None])[0].argmax(0)
        valid = item["mask"] != model.ignore_index
        correct += int((prediction == item["mask"])[valid].sum())
        labelled += int(valid.sum())
    accuracy = 100 * correct / labelled
    assert accuracy >= 75
    assert accuracy == pytest.approx(RELEASED_PIXEL_ACCURACY, abs=0.05)  # scores as it did when released


def test_the_predictions_picture_draws_them(camvid, tmp_path):
    load_benchmark("val_predictions").main(
        ["--data-root", str(camvid), "--images", "0", "1", "--output", str(tmp_path / "val.jpg"), "--title", "released"]
    )
    picture = read_image(tmp_path / "val.jpg")
    assert picture.shape[0] > 2 * 48 and picture.shape[1] > 4 * 64  # two rows of four panels, and a legend
    # A held-out sequence instead (one synthetic training frame is of 0006R0).
    load_benchmark("val_predictions").main(
        ["--data-root", str(camvid), "--split", "dev", "--dev-sequences", "0006R0", "--images", "0",
         "--output", str(tmp_path / "dev.jpg")]
    )  # fmt: skip
    assert read_image(tmp_path / "dev.jpg").shape[0] < picture.shape[0]  # one row
