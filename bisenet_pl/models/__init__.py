"""BiSeNet V1 and V2 networks, faithful to the reference CoinCheung/BiSeNet, and the contract any
network of this package keeps (:class:`SegmentationNetwork`)."""

from bisenet_pl.models.base import SegmentationNetwork
from bisenet_pl.models.bisenetv1 import V1_AUX_POSITIONS, BiSeNetV1
from bisenet_pl.models.bisenetv2 import V2_AUX_POSITIONS, BiSeNetV2
from bisenet_pl.models.convert import convert_coincheung_state_dict, detect_coincheung_architecture
from bisenet_pl.models.resnet import IMAGENET_URLS, ResNet, load_backbone_weights

__all__ = [
    "IMAGENET_URLS",
    "V1_AUX_POSITIONS",
    "V2_AUX_POSITIONS",
    "BiSeNetV1",
    "BiSeNetV2",
    "ResNet",
    "SegmentationNetwork",
    "convert_coincheung_state_dict",
    "detect_coincheung_architecture",
    "load_backbone_weights",
]
