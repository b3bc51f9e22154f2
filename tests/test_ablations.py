"""Every ablation switch of both networks builds, trains one step and leaves no module unused."""

import functools

import pytest
import torch

from bisenet_pl.models import BiSeNetV1, BiSeNetV2
from bisenet_pl.module import SegmentationModule

# One entry per switch value (defaults are the reference network, checked in test_models).
ABLATIONS = {
    "v2-detail-only": (BiSeNetV2, {"branches": "detail", "aux_heads": []}),
    "v2-semantic-only": (BiSeNetV2, {"branches": "semantic"}),
    "v2-sum": (BiSeNetV2, {"aggregation": "sum"}),
    "v2-concat": (BiSeNetV2, {"aggregation": "concat"}),
    "v2-boosters-stem-stage5": (BiSeNetV2, {"aux_heads": ["stem", "stage5"]}),
    "v2-no-boosters": (BiSeNetV2, {"aux_heads": []}),
    "v2-lambda-1/2": (BiSeNetV2, {"semantic_ratio": 0.5}),
    "v2-lambda-1/8": (BiSeNetV2, {"semantic_ratio": 0.125}),
    "v2-lambda-1/16": (BiSeNetV2, {"semantic_ratio": 0.0625}),
    "v2-expansion-4": (BiSeNetV2, {"expansion": 4}),
    "v2-large": (BiSeNetV2, {"width_multiplier": 2.0, "depth_multiplier": 3.0}),
    "v1-no-spatial-path": (BiSeNetV1, {"spatial_path": False}),
    "v1-no-arm": (BiSeNetV1, {"attention_refinement": False}),
    "v1-no-global-context": (BiSeNetV1, {"global_context": False}),
    "v1-sum-fusion": (BiSeNetV1, {"fusion": "sum"}),
    "v1-no-aux": (BiSeNetV1, {"aux_heads": []}),
    "v1-resnet34": (BiSeNetV1, {"backbone": "resnet34"}),
    "v1-resnet50": (BiSeNetV1, {"backbone": "resnet50"}),
    "v1-resnet101": (BiSeNetV1, {"backbone": "resnet101", "aux_heads": ["context16"]}),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablation_trains_one_step(name):
    cls, options = ABLATIONS[name]
    torch.manual_seed(0)
    module = SegmentationModule(
        net=functools.partial(cls, **options), num_classes=3, ignore_index=255, loss={"name": "ce"}
    )
    images = torch.randn(2, 3, 64, 96)
    masks = torch.randint(0, 3, (2, 64, 96))
    outputs = module.net.train()(images)
    assert len(outputs) == 1 + len(options.get("aux_heads", module.net.aux_heads))
    assert all(o.shape == (2, 3, 64, 96) for o in outputs)
    loss = module.training_step({"image": images, "mask": masks}, 0)
    assert torch.isfinite(loss)
    loss.backward()
    # Every parameter the switch leaves in the network takes part in the loss (some gradients
    # are zero at the first step: the GE projections start at zero gamma).
    unused = [n for n, p in module.net.named_parameters() if p.grad is None]
    assert not unused, f"{name}: parameters without gradient: {unused[:5]}"
    module.net.eval()
    with torch.no_grad():
        assert module.net(images[:1]).shape == (1, 3, 64, 96)


def test_ablations_change_the_architecture_as_described():
    reference = BiSeNetV2(19)
    assert reference.semantic_branch.channels == {"stem": 16, "stage3": 32, "stage4": 64, "stage5": 128}
    half = BiSeNetV2(19, semantic_ratio=0.5)
    assert half.semantic_branch.channels == {"stem": 32, "stage3": 64, "stage4": 128, "stage5": 256}
    assert half.semantic_branch.context_embedding.fuse.conv.out_channels == 128  # back to the detail width
    large = BiSeNetV2(19, width_multiplier=2.0, depth_multiplier=3.0)
    assert [len(s) for s in (large.detail_branch.stage1, large.detail_branch.stage2, large.detail_branch.stage3)] == [
        4,
        7,
        7,
    ]
    assert [
        len(s) for s in (large.semantic_branch.stage3, large.semantic_branch.stage4, large.semantic_branch.stage5)
    ] == [4, 4, 10]
    assert large.detail_branch.out_channels == 256 and large.semantic_branch.channels["stage5"] == 256
    assert BiSeNetV2(19, branches="semantic").detail_branch is None
    assert BiSeNetV1(19, spatial_path=False).fusion is None
    assert BiSeNetV1(19, global_context=False).context_path.global_context is None


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (BiSeNetV2, {"branches": "detail"}, "set aux_heads to \\[\\]"),
        (BiSeNetV2, {"branches": "neither"}, "branches must be"),
        (BiSeNetV2, {"aggregation": "product"}, "aggregation must be one of"),
        (BiSeNetV2, {"semantic_ratio": 0.3}, "semantic_ratio gives 19.2 channels"),
        (BiSeNetV1, {"fusion": "max"}, "fusion must be ffm or sum"),
    ],
)
def test_invalid_ablations_are_refused_in_words(cls, options, message):
    with pytest.raises(ValueError, match=message):
        cls(19, **options)
