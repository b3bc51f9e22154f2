"""The network contract (bisenet_pl.models.SegmentationNetwork) is all the rest relies on: a third
network that implements only the contract trains, validates, exports and loads pretrained weights
through the command line, and a network that does not implement it is refused in words; and one tester
runs the contract's checks on every network."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import TinyNetwork, make_camvid_segnet
from torch import nn

from bisenet_pl.cli import main
from bisenet_pl.deploy import load_predictor
from bisenet_pl.errors import ConfigError
from bisenet_pl.models import BiSeNetV1, BiSeNetV2, SegmentationNetwork
from bisenet_pl.models.base import build_network, network_spec
from bisenet_pl.module import SegmentationModule

REPO = Path(__file__).resolve().parents[1]


def test_a_third_network_trains_validates_exports_and_loads_through_the_cli(tmp_path, capsys, caplog):
    camvid = make_camvid_segnet(tmp_path / "camvid", {"train": 2, "val": 1})
    out = tmp_path / "out"
    common = [
        "--config", str(REPO / "configs" / "camvid.yaml"), f"--data.root={camvid}", "--trainer.accelerator=cpu",
        "--trainer.precision=32", "--data.batch_size=2", "--data.num_workers=0", "--data.crop_size=[32,48]",
        "--progress_bar.refresh_rate=0", f"--trainer.default_root_dir={out}",
    ]  # fmt: skip
    network = ["--model.net.class_path=synthetic.TinyNetwork", "--model.net.init_args.width=4"]
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
        "Kept fresh initialisation for 2 tensors not in the checkpoint (e.g. aux_heads.body.classifier.bias): "
        "booster heads, which only training uses (a weights file for inference leaves them out)" in caplog.text
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


# The same checks for every network the package has and the tests' tiny one (as smp's model tester):
# what the LightningModule, weight loading and deployment rely on, at a small size.
CONTRACT_NETWORKS = {"bisenetv1": BiSeNetV1, "bisenetv2": BiSeNetV2, "tiny": TinyNetwork}


@pytest.mark.parametrize("name", list(CONTRACT_NETWORKS))
def test_every_network_keeps_the_contract(name):
    torch.manual_seed(0)
    net = CONTRACT_NETWORKS[name](num_classes=5)
    assert isinstance(net, SegmentationNetwork) and net.num_classes == 5
    images = torch.randn(2, 3, 64, 96)
    outputs = net.train()(images)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert len(outputs) == 1 + len(net.aux_heads)  # main, then one output per aux head in order
    assert all(output.shape == (2, 5, 64, 96) for output in outputs)
    with torch.no_grad():
        assert net.eval()(images).shape == (2, 5, 64, 96)  # logits at the input's size
    names = [name for name, _ in net.named_parameters()]
    assert any(net.is_head_parameter(n) for n in names) and not all(net.is_head_parameter(n) for n in names)
    classifier = net.state_dict()[net.classifier_weight]
    assert classifier.shape[0] == 5 and net.is_classifier_parameter(net.classifier_weight)
    # The module weighs the aux heads: a zero weight removes the head, the rest keep their order.
    heads = list(net.aux_heads)
    kept, weights = net.keep_weighted_aux_heads([0.0] + [1.0] * (len(heads) - 1) if heads else 1.0)
    assert kept == heads[1:] and list(net.aux_heads) == heads[1:] and weights == [1.0] * len(kept)
    with pytest.raises(ConfigError, match="model.loss.aux_weights has"):
        net.keep_weighted_aux_heads([1.0] * (len(kept) + 1))
    # Built from its spec as a checkpoint stores it, it loads its own state dict exactly.
    rebuilt = build_network(network_spec(CONTRACT_NETWORKS[name]), 5)
    rebuilt.remove_aux_heads(set(rebuilt.aux_heads) - set(net.aux_heads))
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(images), net(images))
