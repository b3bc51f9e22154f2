"""The reference's evaluation modes (ss, ssc, msf, mscf) on known answers."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import make_camvid_segnet

from bisenet_pl.cli import main
from bisenet_pl.evaluation import REFERENCE_SCALES, EvaluationProtocol, class_scores, window_starts

REPO = Path(__file__).resolve().parents[1]


class PixelNet(torch.nn.Module):
    """A per-pixel 'network' (logits linear in the input), so flips and crops commute with it; it
    records every input it is given."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.weights = torch.linspace(-2, 2, classes * 3).view(classes, 3, 1, 1)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return F.conv2d(x, self.weights)


def test_protocol_defaults_follow_the_reference():
    assert EvaluationProtocol("ss").scale_list == (1.0,) and not EvaluationProtocol("ss").flips
    assert EvaluationProtocol("msf").scale_list == REFERENCE_SCALES == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert EvaluationProtocol("mscf").flips and EvaluationProtocol("mscf").cropped
    assert EvaluationProtocol("ssc").crop_size == (1024, 1024) and EvaluationProtocol(
        "ssc"
    ).crop_stride == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="mode must be"):
        EvaluationProtocol("multi")


def test_windows_cover_cityscapes_as_the_reference():
    stride = math.ceil(1024 * 2 / 3)
    assert window_starts(2048, 1024, stride) == [0, 683, 1024]  # the last window flush with the edge
    assert window_starts(1024, 1024, stride) == [0]


def test_single_scale_is_the_network_output():
    net = PixelNet()
    images = torch.randn(2, 3, 20, 30)
    assert torch.equal(class_scores(net, images, EvaluationProtocol("ss")), net(images))


def test_sliding_windows_sum_probabilities_over_every_covering_window():
    net = PixelNet()
    images = torch.randn(1, 3, 40, 70)
    protocol = EvaluationProtocol("ssc", crop_size=(32, 32))
    scores = class_scores(net, images, protocol)
    # Windows: stride ceil(32 * 2/3) = 22; rows start at 0, 8; columns at 0, 22, 38.
    assert [tuple(x.shape[-2:]) for x in net.inputs] == [(32, 32)] * 6
    coverage = np.zeros((40, 70))
    for top in (0, 8):
        for left in (0, 22, 38):
            coverage[top : top + 32, left : left + 32] += 1
    expected = torch.from_numpy(coverage).float() * net(images).softmax(dim=1)[0]
    torch.testing.assert_close(scores[0], expected, rtol=1e-5, atol=1e-5)


def test_small_images_are_padded_to_the_crop_centred():
    net = PixelNet()
    images = torch.rand(1, 3, 20, 50) + 1  # no zeros: padding shows as zeros
    class_scores(net, images, EvaluationProtocol("ssc", crop_size=(32, 32)))
    chip = net.inputs[0]
    assert chip.shape[-2:] == (32, 32)
    assert (chip[..., :6, :] == 0).all() and (chip[..., 6:26, :] > 0).all() and (chip[..., 26:, :] == 0).all()


def test_multi_scale_flip_sums_resized_probabilities():
    net = PixelNet()
    images = torch.randn(1, 3, 24, 40)
    scores = class_scores(net, images, EvaluationProtocol("msf", scales=(0.5, 1.0)))
    expected = 0
    for scale in (0.5, 1.0):
        scaled = F.interpolate(images, size=(int(24 * scale), int(40 * scale)), mode="bilinear", align_corners=True)
        logits = F.interpolate(net(scaled), size=(24, 40), mode="bilinear", align_corners=True)
        expected = expected + 2 * logits.softmax(dim=1)  # a per-pixel net: the flipped pass is the same
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)


def test_crop_flip_exponentiates_each_window_as_the_reference():
    net = PixelNet()
    images = torch.randn(1, 3, 32, 32)
    scores = class_scores(net, images, EvaluationProtocol("mscf", scales=(1.0,), crop_size=(32, 32)))
    torch.testing.assert_close(scores, torch.exp(2 * net(images).softmax(dim=1)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["ssc", "msf", "mscf"])
def test_validate_in_every_mode(tmp_path, mode, capsys):
    root = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 2, "test": 1})
    main([
        "validate", "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={root}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--trainer.logger=false",
        "--data.num_workers=0", "--progress_bar.refresh_rate=0", f"--model.evaluation.mode={mode}",
        "--model.evaluation.crop_size=[32,32]", "--model.evaluation.scales=[0.75,1.0]",
    ])  # fmt: skip
    output = capsys.readouterr().out
    assert "val/mIoU" in output and "val/loss" not in output  # a loss of summed probabilities means nothing


@pytest.mark.parametrize("mode", ["ss", "mscf"])
def test_reference_checkpoint_scores_through_the_converter(tmp_path, reference_dir, mode):
    """A CoinCheung/BiSeNet .pth (reference key layout) validated by the CLI gives the mIoU an
    independent computation gives: the converted network's predictions against the labels."""
    from conftest import reference_state_dict
    from synthetic import make_cityscapes

    from bisenet_pl.cli import build_cli
    from bisenet_pl.data import CityscapesDataModule
    from bisenet_pl.models import BiSeNetV2, convert_coincheung_state_dict

    state = reference_state_dict(reference_dir / "bisenetv2_state_dict_keys.tsv")
    # Decisive logits, as a trained network has: near-ties would make the argmax depend on float round-off.
    state["head.conv_out.1.weight"] = 50 * state["head.conv_out.1.weight"]
    torch.save(state, tmp_path / "model_final_v2_city.pth")
    root = make_cityscapes(tmp_path / "cityscapes", {"train": 2, "val": 3})
    cli = build_cli([
        "validate", "--config", str(REPO / "configs" / "cityscapes.yaml"), f"--data.root={root}",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto", "--trainer.precision=32",
        "--trainer.logger=false", "--trainer.sync_batchnorm=false", "--data.num_workers=0",
        "--progress_bar.refresh_rate=0",
        f"--model.pretrained={tmp_path / 'model_final_v2_city.pth'}", f"--model.evaluation.mode={mode}",
        "--model.evaluation.crop_size=[32,32]", *(["--model.evaluation.scales=[0.75,1.0]"] if mode == "mscf" else []),
    ])  # fmt: skip
    ours = cli.trainer.callback_metrics["val/mIoU"].item()

    net = BiSeNetV2(19)
    net.load_state_dict(convert_coincheung_state_dict(state))
    net.eval()
    protocol = EvaluationProtocol(mode, (0.75, 1.0) if mode == "mscf" else None, crop_size=(32, 32))
    dataset = CityscapesDataModule(root=str(root)).dataset("val")
    confusion = np.zeros((19, 19), dtype=np.int64)
    for index in range(len(dataset)):
        item = dataset[index]
        prediction = class_scores(net, item["image"][None], protocol)[0].argmax(0).numpy().ravel()
        target = item["mask"].numpy().ravel()
        valid = target != 255
        confusion += np.bincount(19 * target[valid] + prediction[valid], minlength=19 * 19).reshape(19, 19)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    expected = np.mean(np.diag(confusion)[union > 0] / union[union > 0])
    assert ours == pytest.approx(expected, abs=1e-6)
