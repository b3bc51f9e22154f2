"""Bad input: one clear error naming the file or option, non-zero exit, no traceback, nothing written."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import SIZE, block_label, image_for, make_camvid_segnet, make_folder, write_gray, write_rgb

from bisenet_pl.cli import build_cli, main
from bisenet_pl.errors import UserError
from bisenet_pl.models import BiSeNetV2
from bisenet_pl.models.weights import released_weights_path
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
CPU = [
    "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32",
    "--data.batch_size=2", "--data.num_workers=0", "--data.crop_size=[32,48]", "--data.val_batch_size=1",
    "--progress_bar.refresh_rate=0", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
]  # fmt: skip


def error_of(*args) -> str:
    """Run the CLI in-process; return its one-line error (SystemExit with a message, as the shell sees it)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    message = exit_info.value.code
    assert isinstance(message, str), f"exited with status {message!r} instead of an error message"
    assert message.startswith("bisenet-pl: error: ")
    return message


def fit(config: str, root: Path, *extra: str) -> str:
    return error_of("fit", "--config", str(REPO / "configs" / config), f"--data.root={root}", *CPU, *extra)


@pytest.mark.parametrize(
    "config,make,expected",
    [
        ("camvid.yaml", None, r"CamVid not found at .*nowhere"),
        ("cityscapes.yaml", None, r"Cityscapes split 'train' not found: expected .*nowhere/leftImg8bit/train"),
        ("folder.yaml", None, r"dataset folder .*nowhere does not exist"),
        (
            "folder.yaml",
            lambda root: (
                (root / "images" / "train").mkdir(parents=True) or (root / "masks" / "train").mkdir(parents=True)
            ),
            r"no images .* in .*images/train",
        ),
    ],
)
def test_missing_or_empty_data_root(tmp_path, config, make, expected, monkeypatch):
    root = tmp_path / "nowhere"
    if make:
        make(root)
    monkeypatch.chdir(tmp_path)
    logging_on = [a for a in CPU if a != "--trainer.logger=false"]  # the config's own logger and folders
    message = error_of("fit", "--config", str(REPO / "configs" / config), f"--data.root={root}", *logging_on)
    assert re.search(expected, message)
    assert not (tmp_path / "outputs").exists()  # nothing written


def test_label_without_image(tmp_path):
    root = make_folder(tmp_path / "data", num_classes=2)
    write_gray(root / "masks" / "train" / "orphan.png", np.zeros(SIZE))
    assert "label without image: " in fit("folder.yaml", root) and "orphan.png" in fit("folder.yaml", root)


def link_in_place(path, target: str) -> None:
    """Replace the file at ``path`` by a symbolic link to ``target`` (itself: a loop; a missing file: broken)."""
    path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize(
    "damage,expected",
    [
        (
            lambda root: write_gray(root / "trainannot/0001TP_000001.png", np.zeros((10, 12))),
            "0001TP_000001.png is 12x10 but image",
        ),
        (
            lambda root: write_gray(root / "trainannot/0001TP_000002.png", np.full(SIZE, 77)),
            "0001TP_000002.png holds values [77]",
        ),
        (lambda root: (root / "train/0001TP_000003.png").write_bytes(b"\x89PNG broken"), "cannot read image"),
        (
            lambda root: link_in_place(root / "trainannot/0001TP_000001.png", "0001TP_000001.png"),
            "a loop): 0001TP_000001",
        ),
        (
            lambda root: link_in_place(root / "train/0001TP_000002.png", "moved.png"),
            "(broken, or a loop): 0001TP_000002",
        ),
    ],
)
def test_bad_files_are_named(tmp_path, damage, expected):
    root = make_camvid_segnet(tmp_path / "camvid")
    damage(root)
    assert expected in fit("camvid.yaml", root, "--trainer.max_steps=2")


def test_validate_reports_every_problem_at_once(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    write_gray(root / "trainannot/0001TP_000001.png", np.full(SIZE, 77))
    (root / "val/0001TP_000000.png").write_bytes(b"broken")
    (root / "valannot/0001TP_000001.png").unlink()
    message = fit("camvid.yaml", root, "--data.check_files=true")
    assert "2 problem(s) in the data at" in message
    assert "train: label" in message and "holds values [77]" in message
    assert "val: 1 unpaired files: image without label" in message


def test_the_former_name_of_check_files_still_reads_every_file(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    (root / "val/0001TP_000000.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match=r"data.validate is now data.check_files .* --data.check_files=true"):
        message = fit("camvid.yaml", root, "--data.validate=true")
    assert "1 problem(s) in the data at" in message and "cannot read image" in message


def test_options_that_do_not_fit(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    assert "unrecognized arguments: --model.learning_rate=0.1" in fit("camvid.yaml", root, "--model.learning_rate=0.1")
    assert "data.batch_size must be >= 2" in fit("camvid.yaml", root, "--data.batch_size=1")
    assert "data.crop_size must be [height, width]" in fit("camvid.yaml", root, "--data.crop_size=[8,8]")


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--model.optimizer.lr=-1", "model.optimizer.lr must be > 0; got -1.0"),
        ("--model.optimizer.momentum=1.5", "model.optimizer.momentum must be in [0, 1); got 1.5"),
        ("--model.optimizer.warmup_steps=-5", "model.optimizer.warmup_steps must be >= 0; got -5"),
        ("--model.loss.aux_weights=[1,1,-1,1]", "model.loss.aux_weights must be numbers >= 0"),
        ("--model.loss.ohem_threshold=1.5", "model.loss.ohem_threshold must be in (0, 1); got 1.5"),
        ("--data.val_batch_size=0", "data.val_batch_size must be >= 1; got 0"),
        ("--data.num_workers=-1", "data.num_workers must be >= 0; got -1"),
        ("--data.std=[0.2,0,0.2]", "data.std must be 3 numbers (RGB), each > 0"),
        ("--data.hflip=2", "data.hflip must be a probability in [0, 1]; got 2.0"),
        ("--model.net.init_args.dropout=1.5", "model.net: dropout probability has to be between 0 and 1, but got 1.5"),
        # Trainer options: Lightning's ZeroDivisionError, a negative count it would accept, its own check.
        (
            "--trainer.val_check_interval=0",
            "trainer.val_check_interval must be a share of an epoch in (0, 1] or a number of steps >= 1; got 0",
        ),
        ("--trainer.val_check_interval=1.5", "trainer.val_check_interval must be a share of an epoch in (0, 1]"),
        ("--trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be >= 1; got 0"),
        ("--trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch must be >= 1"),
        ("--trainer.gradient_clip_val=-1", "trainer.gradient_clip_val must be >= 0; got -1"),
        ("--trainer.min_steps=-3", "trainer.min_steps must be >= 0; got -3"),
        ("--trainer.max_steps=-2", "trainer.max_steps must be -1 (no limit) or >= 0; got -2"),
        (
            "--trainer.limit_train_batches=-1",
            "trainer.limit_train_batches must be a share in [0, 1] or a number of batches >= 0",
        ),
        ("--trainer.devices=0", "`Trainer(devices='0')` value is not a valid input using cpu accelerator"),
        ("--trainer.max_time=abc", "`Timer(duration='abc')` is not a valid duration"),
    ],
)
def test_numeric_options_out_of_range_are_named(tmp_path, option, expected):
    root = make_camvid_segnet(tmp_path / "camvid")
    assert expected in fit("camvid.yaml", root, option)


def test_progress_bar_can_be_switched_off(tmp_path, monkeypatch):
    root = make_camvid_segnet(tmp_path / "camvid")
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}", *CPU,
          "--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false"])  # fmt: skip


def test_checkpoint_with_another_class_count(tmp_path):
    camvid = make_camvid_segnet(tmp_path / "camvid")
    out = tmp_path / "out"
    main(["fit", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}", *CPU[:-2],
          "--trainer.max_steps=1", "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={out}"])  # fmt: skip
    checkpoint = next(out.rglob("last.ckpt"))
    folder = make_folder(tmp_path / "folder", num_classes=2)
    message = error_of(
        "validate",
        "--config",
        str(REPO / "configs" / "folder.yaml"),
        f"--data.root={folder}",
        *CPU,
        f"--ckpt_path={checkpoint}",
    )
    assert "the checkpoint predicts 11 classes but this data has 2" in message and "--model.pretrained" in message


def test_non_finite_loss_stops_with_the_step(tmp_path):
    root = make_camvid_segnet(tmp_path / "camvid")
    message = fit(
        "camvid.yaml", root, "--model.optimizer.lr=1e30", "--model.optimizer.warmup_steps=0", "--trainer.max_steps=20"
    )
    assert "non-finite training loss" in message and "at step" in message and "lower model.optimizer.lr" in message


@pytest.fixture(scope="module")
def bad_weight_files(tmp_path_factory):
    """A truncated checkpoint, a text file, and a network state dict that is no Lightning checkpoint."""
    folder = tmp_path_factory.mktemp("weights")
    state = BiSeNetV2(11).state_dict()
    torch.save(state, folder / "state.pth")
    data = (folder / "state.pth").read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (folder / "notes.ckpt").write_text("not a checkpoint\n")
    return folder


@pytest.mark.parametrize("name", ["truncated.ckpt", "notes.ckpt"])
def test_unreadable_weight_files_are_one_line_everywhere(tmp_path, bad_weight_files, name):
    root = make_camvid_segnet(tmp_path / "camvid")
    bad = bad_weight_files / name
    expected = f"{bad} is not a PyTorch checkpoint (truncated, or another kind of file)"
    validate = ["validate", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}", *CPU]
    assert expected in error_of(*validate, f"--ckpt_path={bad}")
    assert expected in error_of(*validate, f"--model.pretrained={bad}")
    assert expected in error_of("export", f"--ckpt_path={bad}", f"--output={tmp_path / 'x.onnx'}")
    assert expected in error_of("convert", str(bad), str(tmp_path / "converted.pth"))
    assert not list(tmp_path.glob("x.onnx*")) and not list(tmp_path.glob("converted*"))


def test_a_state_dict_given_as_ckpt_path_points_to_pretrained(tmp_path, bad_weight_files):
    root = make_camvid_segnet(tmp_path / "camvid")
    state = bad_weight_files / "state.pth"
    message = error_of(
        "validate",
        "--config",
        str(REPO / "configs" / "camvid.yaml"),
        f"--data.root={root}",
        *CPU,
        f"--ckpt_path={state}",
    )
    assert "is not a checkpoint written by bisenet-pl fit" in message and f"--model.pretrained={state}" in message


def test_weights_with_a_nan_or_a_description_that_contradicts_them_are_refused(tmp_path):
    released = torch.load(released_weights_path("bisenetv2_camvid"), weights_only=True)
    nan = released | {"state_dict": dict(released["state_dict"])}
    nan["state_dict"]["head.conv.conv.weight"] = nan["state_dict"]["head.conv.conv.weight"].clone()
    nan["state_dict"]["head.conv.conv.weight"][0, 0, 0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    twelve = released | {"num_classes": 12, "class_names": [*released["class_names"], "Extra"]}
    torch.save(twelve, tmp_path / "twelve.pt")
    root = make_camvid_segnet(tmp_path / "camvid")
    test = ["test", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}", *CPU]
    message = error_of(*test, f"--model.pretrained={tmp_path / 'nan.pt'}")
    assert "1 tensor(s) hold NaN or infinite values (e.g. head.conv.conv.weight)" in message
    message = error_of("export", f"--model.pretrained={tmp_path / 'twelve.pt'}", f"--output={tmp_path / 'x.onnx'}")
    assert "says it predicts 12 classes but its classifier head.classifier.bias has 11" in message
    with pytest.raises(UserError, match="is a folder, not a weights file: give the .pt, .pth or .ckpt file itself"):
        SegmentationModule.from_pretrained(tmp_path)
    assert not list(tmp_path.glob("x.onnx*"))


def test_weights_that_cannot_be_fetched_say_how_to_give_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty cache: nothing to fall back on
    root = make_camvid_segnet(tmp_path / "camvid")
    url = "http://127.0.0.1:9/bisenetv2.pth"  # the discard port: nothing listens
    message = fit("camvid.yaml", root, f"--model.pretrained={url}", "--trainer.fast_dev_run=true")
    assert f"could not fetch {url}" in message and "give the local file's path instead" in message
    message = fit("camvid_bisenetv1.yaml", root, "--model.backbone_weights=imagenet", "--trainer.fast_dev_run=true")
    assert "could not fetch https://download.pytorch.org/models/resnet18" in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message


def test_validation_images_of_different_sizes_are_batched_by_size(tmp_path, monkeypatch):
    """The default val_batch_size used to fail with 'stack expects each tensor to be equal size'."""
    root = make_folder(tmp_path / "folder", num_classes=2, counts={"train": 2, "val": 3})
    rng = np.random.default_rng(1)
    for index in range(3):  # three more of another size, interleaved in file order
        label = block_label(rng, [0, 1, 255], size=(40, 56))
        write_rgb(root / "images" / "val" / f"img{index}b.jpg", image_for(label, rng))
        write_gray(root / "masks" / "val" / f"img{index}b.png", label)
    monkeypatch.chdir(tmp_path)
    scores = {}
    for batch in (4, 1):
        cli = build_cli([
            "validate", "--config", str(REPO / "configs" / "folder.yaml"), f"--data.root={root}", *CPU,
            "--data.init_args.num_classes=2", f"--data.val_batch_size={batch}", "--seed_everything=0",
        ])  # fmt: skip
        scores[batch] = float(cli.trainer.callback_metrics["val/mIoU"])
    assert scores[4] == scores[1]


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--data.batch_size=abc", "--data.batch_size: Expected a <class 'int'>. Got value: abc"),
        ("--data.crop_size=[1,2,3]", "--data.crop_size: Expected a tuple with 2 elements. Got value: [1, 2, 3]"),
        (
            "--model.evaluation.mode=foo",
            "--model.evaluation.mode: Expected a typing.Literal['ss', 'ssc', 'msf', 'mscf']. Got value: foo",
        ),
        ("--trainer.precision=fp8", "--trainer.precision: Expected <class 'int'> or typing.Literal["),
        # The configs name no logger since the CSV log follows trainer.default_root_dir: the old way says so.
        ("--trainer.logger.init_args.save_dir=out", "--trainer.logger.init_args.*: no logger is named to take them"),
    ],
)
def test_wrong_types_are_one_line_naming_the_option(tmp_path, option, expected):
    message = fit("camvid.yaml", tmp_path, option)
    assert "\n" not in message and expected in message


def test_an_option_the_chosen_class_does_not_take_is_named_with_the_class(tmp_path):
    message = fit("camvid.yaml", tmp_path, "--data.crop_sise=[64,64]")
    assert "\n" not in message
    assert "--data.crop_sise: not an option of bisenet_pl.data.CamVidDataModule" in message
    # predict without a config: no DataModule is chosen to take the option
    message = error_of("predict", "--model.pretrained=bisenetv2_camvid", "--data.predict_source=image.png")
    assert "--data.predict_source: not an option of lightning.LightningDataModule (none is chosen: give " in message


def test_a_yaml_syntax_error_names_the_config_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  optimizer: [0.1\n")
    message = fit("camvid.yaml", tmp_path, "--config", str(broken))
    assert "\n" not in message and f"--config {broken}: not valid YAML at line 3, column 1" in message


def test_unwritable_outputs_are_found_before_any_work(tmp_path, monkeypatch, bad_weight_files):
    root = make_camvid_segnet(tmp_path / "camvid")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    message = fit("camvid.yaml", root, f"--trainer.default_root_dir={blocker / 'out'}")
    assert f"trainer.default_root_dir {blocker / 'out'}: {blocker} is a file, not a folder" in message
    message = error_of(
        "predict", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}", *CPU,
        f"--prediction_writer.output_dir={blocker / 'predictions'}", "--data.test_split=val",
    )  # fmt: skip
    assert f"prediction_writer.output_dir {blocker / 'predictions'}: {blocker} is a file" in message
    message = error_of("export", f"--ckpt_path={bad_weight_files / 'state.pth'}", f"--output={blocker / 'net.onnx'}")
    assert f"--output {blocker}: {blocker} is a file, not a folder" in message

    def read_only(*args, **kwargs):
        raise PermissionError(30, "Read-only file system")

    monkeypatch.setattr("bisenet_pl.files.tempfile.TemporaryFile", read_only)
    message = fit("camvid.yaml", root, f"--trainer.default_root_dir={tmp_path / 'out'}")
    assert f"trainer.default_root_dir {tmp_path / 'out'}: cannot write in {tmp_path} (Read-only file system)" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "lightning_logs").exists()
