"""Convert CoinCheung/BiSeNet state dicts (its released ``.pth`` files) to our key layout.

Each rule maps a reference module path (regular expression, matched in full) to ours; the
parameter name after the last dot (``weight``, ``running_mean``...) is kept as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch

from bisenet_pl.errors import ConfigError

_V2_STAGES = {"3": "stage3", "4": "stage4", "5_4": "stage5"}
_V2_AUX = {"2": "stem", "3": "stage3", "4": "stage4", "5_4": "stage5"}
_CONV_BN = {"0": "conv", "1": "bn"}

_V2_RULES: list[tuple[str, str]] = [
    (r"detail\.S(\d)\.(\d+)\.(conv|bn)", r"detail_branch.stage\1.\2.\3"),
    (r"segment\.S1S2\.conv\.(conv|bn)", r"semantic_branch.stem.conv.\1"),
    (r"segment\.S1S2\.left\.(\d)\.(conv|bn)", r"semantic_branch.stem.conv_path.\1.\2"),
    (r"segment\.S1S2\.fuse\.(conv|bn)", r"semantic_branch.stem.fuse.\1"),
    (
        r"segment\.S(3|4|5_4)\.(\d+)\.conv1\.(conv|bn)",
        lambda m: f"semantic_branch.{_V2_STAGES[m[1]]}.{m[2]}.gather.{m[3]}",
    ),
    # The stride-2 layer's first depthwise conv is "dwconv1", the stride-1 layer's only one "dwconv".
    (
        r"segment\.S(3|4|5_4)\.(\d+)\.dwconv1?\.([01])",
        lambda m: f"semantic_branch.{_V2_STAGES[m[1]]}.{m[2]}.expand.{_CONV_BN[m[3]]}",
    ),
    (
        r"segment\.S(3|4|5_4)\.(\d+)\.dwconv2\.([01])",
        lambda m: f"semantic_branch.{_V2_STAGES[m[1]]}.{m[2]}.depthwise.{_CONV_BN[m[3]]}",
    ),
    (
        r"segment\.S(3|4|5_4)\.(\d+)\.conv2\.([01])",
        lambda m: f"semantic_branch.{_V2_STAGES[m[1]]}.{m[2]}.project.{_CONV_BN[m[3]]}",
    ),
    (
        r"segment\.S(3|4|5_4)\.(\d+)\.shortcut\.([0-3])",
        lambda m: (
            f"semantic_branch.{_V2_STAGES[m[1]]}.{m[2]}.shortcut."
            + ("depthwise." if m[3] in "01" else "pointwise.")
            + ("conv" if m[3] in "02" else "bn")
        ),
    ),
    (r"segment\.S5_5\.bn", "semantic_branch.context_embedding.norm"),
    (r"segment\.S5_5\.conv_gap\.(conv|bn)", r"semantic_branch.context_embedding.pooled_conv.\1"),
    (r"segment\.S5_5\.conv_last\.(conv|bn)", r"semantic_branch.context_embedding.fuse.\1"),
    (r"bga\.left1\.([01])", lambda m: f"aggregation.detail_high.depthwise.{_CONV_BN[m[1]]}"),
    (r"bga\.left1\.2", "aggregation.detail_high.pointwise"),
    (r"bga\.left2\.([01])", lambda m: f"aggregation.detail_low.downsample.{_CONV_BN[m[1]]}"),
    (r"bga\.right1\.([01])", lambda m: f"aggregation.semantic_high.{_CONV_BN[m[1]]}"),
    (r"bga\.right2\.([01])", lambda m: f"aggregation.semantic_low.depthwise.{_CONV_BN[m[1]]}"),
    (r"bga\.right2\.2", "aggregation.semantic_low.pointwise"),
    (r"bga\.conv\.([01])", lambda m: f"aggregation.fuse.{_CONV_BN[m[1]]}"),
    (r"head\.conv\.(conv|bn)", r"head.conv.\1"),
    (r"head\.conv_out\.1", "head.classifier"),
    (r"aux(2|3|4|5_4)\.conv\.(conv|bn)", lambda m: f"aux_heads.{_V2_AUX[m[1]]}.conv.{m[2]}"),
    (r"aux(2|3|4|5_4)\.conv_out\.0\.1\.(conv|bn)", lambda m: f"aux_heads.{_V2_AUX[m[1]]}.refine.{m[2]}"),
    (r"aux(2|3|4|5_4)\.conv_out\.1", lambda m: f"aux_heads.{_V2_AUX[m[1]]}.classifier"),
]

_V1_RULES: list[tuple[str, str]] = [
    (r"cp\.resnet\.(.+)", r"context_path.backbone.\1"),
    (r"cp\.arm(16|32)\.conv\.(conv|bn)", r"context_path.refine\1.conv.\2"),
    (r"cp\.arm(16|32)\.conv_atten", r"context_path.refine\1.attention.conv"),
    (r"cp\.arm(16|32)\.bn_atten", r"context_path.refine\1.attention.bn"),
    (r"cp\.conv_head(16|32)\.(conv|bn)", r"context_path.upsample\1_conv.\2"),
    (r"cp\.conv_avg\.(conv|bn)", r"context_path.global_context.\1"),
    (r"sp\.conv([123])\.(conv|bn)", r"spatial_path.conv\1.\2"),
    (r"sp\.conv_out\.(conv|bn)", r"spatial_path.project.\1"),
    (r"ffm\.convblk\.(conv|bn)", r"fusion.fuse.\1"),
    (r"ffm\.(conv|bn)", r"fusion.attention.\1"),
    (r"conv_out\.conv\.(conv|bn)", r"head.conv.\1"),
    (r"conv_out\.conv_out", "head.classifier"),
    # The reference names its aux heads by the stride of their *logits* path, 16 and 32;
    # they sit on the context path's 1/8 and 1/16 outputs.
    (r"conv_out16\.conv\.(conv|bn)", r"aux_heads.context8.conv.\1"),
    (r"conv_out16\.conv_out", "aux_heads.context8.classifier"),
    (r"conv_out32\.conv\.(conv|bn)", r"aux_heads.context16.conv.\1"),
    (r"conv_out32\.conv_out", "aux_heads.context16.classifier"),
]

_RULES = {
    "bisenetv1": [(re.compile(p), r) for p, r in _V1_RULES],
    "bisenetv2": [(re.compile(p), r) for p, r in _V2_RULES],
}
# Top-level modules that identify each reference network.
_SIGNATURES = {"bisenetv1": {"cp", "sp", "ffm"}, "bisenetv2": {"detail", "segment", "bga"}}


def detect_coincheung_architecture(state_dict: Mapping[str, torch.Tensor]) -> Literal["bisenetv1", "bisenetv2"]:
    """Tell which reference network a state dict belongs to, or raise ``ValueError``."""
    roots = {key.removeprefix("module.").split(".", 1)[0] for key in state_dict}
    for name, signature in _SIGNATURES.items():
        if signature <= roots:
            return name  # type: ignore[return-value]
    raise ConfigError(
        "not a CoinCheung/BiSeNet state dict: expected the top-level modules "
        f"{sorted(_SIGNATURES['bisenetv1'])} (BiSeNetV1) or {sorted(_SIGNATURES['bisenetv2'])} "
        f"(BiSeNetV2), found {sorted(roots)[:10]}"
    )


def convert_coincheung_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a CoinCheung/BiSeNet V1 or V2 state dict to this package's key layout.

    The result loads with ``strict=True`` into ``BiSeNetV1(num_classes)`` or
    ``BiSeNetV2(num_classes)`` (aux heads included if the reference had them). A DDP
    ``module.`` prefix is accepted. Keys of any other layout (another network, or an older
    reference release with PixelShuffle heads) raise ``ConfigError`` (a ``ValueError``) naming them.
    """
    rules = _RULES[detect_coincheung_architecture(state_dict)]
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        module_path, _, param = key.removeprefix("module.").rpartition(".")
        for pattern, replacement in rules:
            match = pattern.fullmatch(module_path)
            if match:
                new_path = replacement(match) if callable(replacement) else match.expand(replacement)
                converted[f"{new_path}.{param}"] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConfigError(
            f"unrecognised keys for the CoinCheung/BiSeNet layout ({len(unknown)}): {unknown[:8]}"
            f"{' ...' if len(unknown) > 8 else ''}. Only the current reference release is supported."
        )
    return converted
