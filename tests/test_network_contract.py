"""The network contract (bisenet_pl.models.SegmentationNetwork) is all the rest relies on: a third
network that implements only the contract trains, validates, exports and loads pretrained weights
through the command line, and a network that does not implement it is refused in words."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import make_camvid_segnet
from torch import nn

from bisenet_pl.cli import main
from bisenet_pl.deploy import load_predictor
from bisenet_pl.models import SegmentationNetwork
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]


class Classifier(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, features: torch.Tensor, size) -> torch.Tensor:
        return F.interpolate(self.classifier(features), size=size, mode="bilinear", align_corners=False)


class TinyNetwork(SegmentationNetwork):
    """A strided conv-BN-ReLU body, a head and one aux head: the contract and nothing else."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__(num_classes)
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.head = Classifier(width, num_classes)
        self.aux_heads = nn.ModuleDict({"body": Classifier(width, num_classes)})

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        features, size = self.body(images), images.shape[-2:]
        logits = self.head(features, size)
        if not self.training:
            return logits
        return (logits, *(head(features, size) for head in self.aux_heads.values()))


def test_a_third_network_trains_validates_exports_and_loads_through_the_cli(tmp_path, capsys, caplog):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1})
    out = tmp_path / "out"
    common = [
        "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}", "--trainer.accelerator=cpu",
        "--trainer.precision=32", "--data.batch_size=2", "--data.num_workers=0", "--data.crop_size=[32,48]",
        "--progress_bar.refresh_rate=0", f"--trainer.default_root_dir={out}",
    ]  # fmt: skip
    network = ["--model.net.class_path=test_network_contract.TinyNetwork", "--model.net.init_args.width=4"]
    main(
        [
            "fit",
            *common,
            *network,
            "--trainer.max_steps=2",
            "--trainer.val_check_interval=2",
            "--last_checkpoint.every_n_train_steps=1",
        ]
    )
    assert "Validation at step 2: mIoU" in capsys.readouterr().out
    checkpoint = next(out.rglob("last.ckpt"))
    loaded = SegmentationModule.load_from_checkpoint(checkpoint, map_location="cpu")
    assert (
        isinstance(loaded.net, TinyNetwork)
        and loaded.net.body[0].out_channels == 4
        and list(loaded.net.aux_heads) == ["body"]
    )

    main(["validate", *common, f"--ckpt_path={checkpoint}", "--data.test_split=val"])
    assert "val/mIoU" in capsys.readouterr().out

    main(["export", f"--ckpt_path={checkpoint}", "--input=uint8_nhwc", "--labels=int64", "--size", "32", "48"])
    assert "onnxruntime agrees with PyTorch" in capsys.readouterr().out
    labels = load_predictor(checkpoint.with_suffix(".onnx"))(np.zeros((1, 24, 40, 3), np.uint8))
    assert labels.shape == (1, 24, 40) and labels.max() < 11

    weights = tmp_path / "tiny.pt"
    main(["export", f"--ckpt_path={checkpoint}", "--format=weights", f"--output={weights}"])
    assert isinstance(SegmentationModule.from_pretrained(weights).net, TinyNetwork)
    # Fine-tuning from those weights: all of them load (aux heads aside: not in the file, trained afresh).
    with caplog.at_level(logging.INFO):
        main(
            [
                "fit",
                *common,
                *network,
                f"--model.pretrained={weights}",
                "--trainer.max_steps=1",
                "--trainer.limit_val_batches=0",
            ]
        )
    assert f"Loaded pretrained weights from {weights}" in caplog.text and "Re-initialised" not in caplog.text
    assert (
        "Kept fresh initialisation for 2 tensors not in the checkpoint (e.g. aux_heads.body.classifier.bias)"
        in caplog.text
    )


def test_a_network_outside_the_contract_is_refused():
    class Plain(nn.Module):
        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, num_classes, 1)

    with pytest.raises(ValueError, match="not a bisenet_pl.models.SegmentationNetwork"):
        SegmentationModule(net=Plain, num_classes=3)


def test_the_contract_names_heads_classifiers_and_backbone():
    net = TinyNetwork(5)
    assert net.is_head_parameter("head.classifier.weight") and net.is_head_parameter("aux_heads.body.classifier.bias")
    assert not net.is_head_parameter("body.0.weight")
    assert net.is_classifier_parameter("aux_heads.body.classifier.weight") and not net.is_classifier_parameter(
        "body.1.weight"
    )
    net.remove_aux_heads(["body"])
    assert len(net.aux_heads) == 0
    with pytest.raises(ValueError, match="has no ImageNet backbone"):
        net.load_backbone_weights("imagenet")
