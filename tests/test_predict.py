"""bisenet-pl predict: folders of mixed images, videos, the Cityscapes submission format."""

import argparse
import functools
import warnings
from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest
import torch
from synthetic import make_camvid_segnet, make_cityscapes, write_gray, write_rgb

from bisenet_pl.cli import main
from bisenet_pl.data.io import read_image
from bisenet_pl.data.predict import SameSizeBatches, VideoFrames, find_images
from bisenet_pl.data.transforms import eval_transform, to_tensors
from bisenet_pl.errors import DataError
from bisenet_pl.models import BiSeNetV2
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--trainer.logger=false",
       "--data.num_workers=0", "--progress_bar.refresh_rate=0"]  # fmt: skip


def save_checkpoint(path: Path, num_classes: int) -> SegmentationModule:
    torch.manual_seed(0)
    module = SegmentationModule(net=functools.partial(BiSeNetV2, aux_heads=[]), num_classes=num_classes)
    for m in module.net.modules():  # non-trivial statistics, so that predictions vary over the image
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
            m.running_mean.normal_(0, 0.2)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return module.eval()


def write_video(path: Path, frames: int, codec: str) -> Path:
    """Random 64x48 frames at 10 fps."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), 10.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path


def predict_noting_warnings(camvid: Path, checkpoint: Path, source: Path, out: Path, *options: str) -> list[str]:
    """``bisenet-pl predict`` of ``source`` on the CPU; the messages of every warning no filter hid."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", append=True)  # even one seen before in this process
        main([
            "predict", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}", *CPU,
            f"--data.predict_source={source}", "--data.val_batch_size=2", f"--ckpt_path={checkpoint}",
            f"--prediction_writer.output_dir={out}", *options,
        ])  # fmt: skip
    return [str(w.message) for w in caught]


def expected_labels(module: SegmentationModule, path: Path, mean, std) -> np.ndarray:
    image, _ = to_tensors(eval_transform(mean, std)(image=read_image(path))["image"], None)
    with torch.no_grad():
        return module(image[None])[0].argmax(0).numpy()


def test_predict_a_folder_of_mixed_images(tmp_path):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1, "test": 1})
    module = save_checkpoint(tmp_path / "model.ckpt", num_classes=11)
    inputs = tmp_path / "inputs"
    rng = np.random.default_rng(0)
    write_rgb(inputs / "a.png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    write_rgb(inputs / "b.png", rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    (inputs / "sub").mkdir()
    assert cv2.imwrite(str(inputs / "sub" / "c.png"), rng.integers(0, 255, (40, 56, 4), dtype=np.uint8))  # RGBA
    write_gray(inputs / "d.jpg", rng.integers(0, 255, (33, 71)))  # grayscale, odd size
    out = tmp_path / "predictions"
    every_output = "--prediction_writer.outputs=[labels,colour,overlay,probabilities]"
    messages = predict_noting_warnings(camvid, tmp_path / "model.ckpt", inputs, out, every_output)
    datamodule_stats = (0.4119, 0.4251, 0.4327), (0.3071, 0.3116, 0.3072)  # CamVid's (configs use the dataset's)
    for name, image in {"a": "a.png", "b": "b.png", "sub/c": "sub/c.png", "d": "d.jpg"}.items():
        labels = cv2.imread(str(out / "labels" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        height, width = cv2.imread(str(inputs / image), cv2.IMREAD_UNCHANGED).shape[:2]
        assert labels.shape == (height, width) and labels.max() < 11
        assert np.array_equal(labels, expected_labels(module, inputs / image, *datamodule_stats)), name
        assert cv2.imread(str(out / "colour" / f"{name}.png")).shape == (height, width, 3)
        assert cv2.imread(str(out / "overlay" / f"{name}.jpg")).shape == (height, width, 3)
        probabilities = np.load(out / "probabilities" / f"{name}.npy")
        assert probabilities.shape == (11, height, width) and probabilities.dtype == np.float16
        np.testing.assert_allclose(probabilities.astype(np.float32).sum(0), 1, atol=1e-2)
        assert (probabilities.argmax(0) == labels).mean() > 0.99  # float16 may split near-ties
    assert not list(out.rglob("*.part*"))
    # Batches of one size each hold every image once, so Lightning's doubt about custom samplers is not shown.
    batches = SameSizeBatches(sorted(inputs.rglob("*.*")), batch_size=2)
    assert sorted(index for batch in batches for index in batch) == [0, 1, 2, 3] and len(batches) == 3
    assert not [m for m in messages if "custom batch sampler" in m]


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an EXIF block saying how a viewer must turn it (6: 90 degrees clockwise)."""
    entry = (
        (0x0112).to_bytes(2, "little")
        + (3).to_bytes(2, "little")
        + (1).to_bytes(4, "little")
        + orientation.to_bytes(4, "little")
    )
    tiff = b"II*\x00" + (8).to_bytes(4, "little") + (1).to_bytes(2, "little") + entry + (0).to_bytes(4, "little")
    exif = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]


def test_a_camera_turned_jpeg_is_predicted_upright_and_skipped_files_are_named(tmp_path):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1, "test": 1})
    save_checkpoint(tmp_path / "model.ckpt", num_classes=11)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    stored = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)  # 64 wide, 48 high as stored
    ok, jpeg = cv2.imencode(".jpg", stored)
    (inputs / "turned.jpg").write_bytes(with_exif_orientation(jpeg.tobytes(), 6))
    (inputs / "animation.gif").write_bytes(b"GIF89a")
    (tmp_path / "elsewhere").mkdir()
    write_rgb(tmp_path / "elsewhere" / "x.png", stored)
    (inputs / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert read_image(inputs / "turned.jpg").shape == (64, 48, 3)  # upright, as a viewer shows it
    out = tmp_path / "predictions"
    skipped = (
        r"predicting 1 images; skipped 1 file\(s\) that are not images it reads \(animation.gif\) and 1 linked "
        r"folder\(s\), not followed"
    )
    with pytest.warns(UserWarning, match=skipped):
        main([
            "predict", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}", *CPU,
            f"--data.predict_source={inputs}", f"--ckpt_path={tmp_path / 'model.ckpt'}",
            f"--prediction_writer.output_dir={out}",
        ])  # fmt: skip
    assert cv2.imread(str(out / "labels" / "turned.png"), cv2.IMREAD_UNCHANGED).shape == (64, 48)


def test_predict_a_video(tmp_path):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1, "test": 1})
    save_checkpoint(tmp_path / "model.ckpt", num_classes=11)
    video = write_video(tmp_path / "drive.mp4", frames=5, codec="mp4v")
    out = tmp_path / "predictions"
    messages = predict_noting_warnings(camvid, tmp_path / "model.ckpt", video, out)
    # Lightning's doubts about a frame stream do not apply: one process decodes it (so its length is exact),
    # and the writer names each frame by its number, not by batch indices.
    assert not [m for m in messages if "`IterableDataset` has `__len__`" in m or "infer the batch indices" in m]
    assert sorted(p.name for p in (out / "labels" / "drive").iterdir()) == [f"frame_{i:06d}.png" for i in range(5)]
    for kind in ("colour", "overlay"):
        capture = cv2.VideoCapture(str(out / f"drive_{kind}.mp4"))
        assert capture.get(cv2.CAP_PROP_FRAME_COUNT) == 5 and capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
        assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (64, 48)
        capture.release()
    assert not list(out.rglob("*.part*"))


def test_cityscapes_submission_format(tmp_path):
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as official
    from cityscapesscripts.helpers.labels import trainId2label

    cityscapes = make_cityscapes(tmp_path / "cityscapes", {"train": 2, "val": 1, "test": 2})
    save_checkpoint(tmp_path / "model.ckpt", num_classes=19)
    out = tmp_path / "predictions"
    main([
        "predict", "--config", str(REPO / "configs" / "cityscapes.yaml"), f"--data.root={cityscapes}", *CPU,
        "--trainer.strategy=auto", f"--ckpt_path={tmp_path / 'model.ckpt'}", f"--prediction_writer.output_dir={out}",
        "--prediction_writer.outputs=[labels]", "--prediction_writer.cityscapes_submission=true",
    ])  # fmt: skip
    args = argparse.Namespace(predictionPath=str(out / "cityscapes_submission"), predictionWalk=None)
    tests = sorted((cityscapes / "gtFine" / "test").rglob("*_gtFine_labelIds.png"))
    assert len(tests) == 2
    for ground_truth in tests:
        found = Path(official.getPrediction(args, str(ground_truth)))  # the benchmark's own lookup
        city = ground_truth.parent.name
        stem = ground_truth.name.replace("_gtFine_labelIds.png", "")
        train_ids = cv2.imread(
            str(out / "labels" / "leftImg8bit" / "test" / city / f"{stem}_leftImg8bit.png"), cv2.IMREAD_UNCHANGED
        )
        label_ids = cv2.imread(str(found), cv2.IMREAD_UNCHANGED)
        assert found.parent.name == city and label_ids.dtype == np.uint8
        expected = np.vectorize(lambda t: trainId2label[int(t)].id)(train_ids)
        assert np.array_equal(label_ids, expected)


def test_predict_source_errors_are_one_line(tmp_path):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1, "test": 1})
    base = ["predict", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}", *CPU]
    (tmp_path / "empty").mkdir()
    for source, message in [
        (tmp_path / "nowhere", "does not exist"),
        (tmp_path / "empty", "holds no images"),
        (tmp_path / "notes.txt", "neither an image"),
        (tmp_path / "broken.mp4", "cannot open video"),
    ]:
        if source.suffix:
            source.write_text("not media")
        with pytest.raises(SystemExit, match=message):
            main([*base, f"--data.predict_source={source}"])


def test_images_whose_outputs_would_collide_are_refused_naming_both(tmp_path):
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("a.png", "a.jpg", "b.png"):
        write_rgb(folder / name, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    with pytest.raises(
        DataError, match=rf"{folder / 'a.jpg'} and {folder / 'a.png'} have the same name apart from the suffix"
    ):
        find_images(folder)
    (folder / "a.jpg").unlink()
    assert [p.name for p in find_images(folder)] == ["a.png", "b.png"]


def test_a_truncated_video_says_how_many_frames_were_read(tmp_path):
    video = write_video(tmp_path / "drive.avi", frames=12, codec="MJPG")
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    frames = VideoFrames(video, eval_transform())
    with pytest.warns(
        UserWarning, match=rf"video {video}: decoded (\d+) of the 12 frames its header announces"
    ) as caught:
        decoded = len(list(frames))
    assert 0 < decoded < 12 and f"decoded {decoded} of the 12" in str(caught[0].message)


def test_a_corrupt_image_is_skipped_named_and_fails_the_run_at_its_end(tmp_path):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1, "test": 1})
    save_checkpoint(tmp_path / "model.ckpt", num_classes=11)
    folder = tmp_path / "images"
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png", "d.png"):
        write_rgb(folder / name, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    valid_png = (folder / "a.png").read_bytes()
    (folder / "b.png").write_bytes(valid_png[: len(valid_png) // 2])  # a readable header, truncated data
    (folder / "e.png").write_bytes(b"not an image")
    out = tmp_path / "predictions"
    args = [
        "predict", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}", *CPU,
        f"--data.predict_source={folder}", "--data.val_batch_size=2", f"--ckpt_path={tmp_path / 'model.ckpt'}",
        f"--prediction_writer.output_dir={out}",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as failed:
        main(args)
    message = str(failed.value.code)
    assert message.startswith(
        "bisenet-pl: error: 2 image(s) could not be read and were skipped (the 3 others were written)"
    )
    assert str(folder / "b.png") in message and str(folder / "e.png") in message
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["a.png", "c.png", "d.png"]  # the ones after b too
    # With data.check_files the run stops before any work, listing both.
    with pytest.raises(SystemExit) as refused:
        main([*args, "--data.check_files=true", f"--prediction_writer.output_dir={tmp_path / 'none'}"])
    assert "2 of the 5 images to predict cannot be read" in str(refused.value.code) and not (tmp_path / "none").exists()


@pytest.mark.parametrize("inside", [".", "predictions"])
def test_predictions_never_go_inside_the_folder_they_are_read_from(tmp_path, inside):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1, "test": 1})
    save_checkpoint(tmp_path / "model.ckpt", num_classes=11)
    folder = tmp_path / "images"
    write_rgb(folder / "a.png", np.zeros((24, 32, 3), dtype=np.uint8))
    out = folder / inside
    with pytest.raises(SystemExit) as refused:
        main([
            "predict", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}", *CPU,
            f"--data.predict_source={folder}", f"--ckpt_path={tmp_path / 'model.ckpt'}",
            f"--prediction_writer.output_dir={out}",
        ])  # fmt: skip
    message = str(refused.value.code)
    assert f"prediction_writer.output_dir {out} is inside data.predict_source {folder}" in message
    assert [p.name for p in folder.iterdir()] == ["a.png"]  # nothing written


def test_decoders_print_nothing_of_their_own(tmp_path, capfd):
    """libpng, libjpeg, ffmpeg and OpenCV's log write to stderr themselves; our one line says it."""
    write_rgb(tmp_path / "ok.png", np.zeros((40, 40, 3), dtype=np.uint8))
    png = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "chunk.png").write_bytes(png[:30] + b"x" * 20 + png[50:])  # OpenCV: "chunk data is too large"
    (tmp_path / "short.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 100)  # libjpeg: "Premature end of JPEG file"
    capfd.readouterr()
    for name in ("chunk.png", "short.jpg"):
        with pytest.raises(DataError, match=f"cannot read image {tmp_path / name}"):
            read_image(tmp_path / name)
    video = write_video(tmp_path / "drive.avi", frames=6, codec="MJPG")
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.warns(UserWarning, match="decoded"):
        list(VideoFrames(video, eval_transform()))
    assert capfd.readouterr().err == ""


def test_a_video_whose_header_has_no_frame_count_is_predicted(tmp_path):
    """OpenCV reports no frame count for some streams (here an image named .mp4, read by its image-sequence reader):
    the length was 0, and predict wrote nothing with exit 0."""
    write_rgb(tmp_path / "still.png", np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    video = tmp_path / "still.mp4"
    (tmp_path / "still.png").rename(video)
    capture = cv2.VideoCapture(str(video))
    assert capture.isOpened() and capture.get(cv2.CAP_PROP_FRAME_COUNT) <= 0  # what made the length 0
    capture.release()
    frames = VideoFrames(video, eval_transform())
    assert len(frames) == 1 and [item["frame"] for item in frames] == [0]
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="cannot open video|has no frame OpenCV can decode"):
        VideoFrames(tmp_path / "empty.mp4", eval_transform())
