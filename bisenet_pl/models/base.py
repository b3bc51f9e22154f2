"""The contract of a segmentation network: everything the LightningModule, weight loading and
deployment rely on, written down once. BiSeNetV1 and BiSeNetV2 implement it; so can a third network
(see ``tests/test_network_contract.py`` for the smallest one)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from bisenet_pl.errors import ConfigError


class SegmentationNetwork(nn.Module):
    """A network built as ``Network(num_classes, **options)`` that

    - maps normalised images (N, C, H, W) to logits (N, ``num_classes``, H, W) at the input's size
      in eval mode, and in training mode to ``(main, *aux)``: one more output per aux head, in the
      order of ``aux_heads``;
    - keeps its training-only heads in ``aux_heads`` (maybe empty), so that training can drop the
      ones it does not weigh (:meth:`remove_aux_heads`) and deployment all of them;
    - names the top-level modules trained at the head learning rate (``head_modules``) and the
      layers whose shape follows the class count (``classifier_name``: a module of that name);
    - loads ImageNet weights into its backbone if it has one (:meth:`load_backbone_weights`).

    Subclasses call ``super().__init__(num_classes)`` first and assign ``self.aux_heads`` (an
    ``nn.ModuleDict``, empty without aux heads) after their other modules: registration order is
    state-dict order and initialisation order.
    """

    #: Top-level modules trained at the head learning rate (10x in the reference recipe).
    head_modules: ClassVar[tuple[str, ...]] = ("head", "aux_heads")
    #: Modules of this name produce one channel per class: re-initialised when weights of another
    #: class count are loaded.
    classifier_name: ClassVar[str] = "classifier"
    #: The main classifier's weight, whose first dimension is the class count.
    classifier_weight: ClassVar[str] = "head.classifier.weight"

    aux_heads: nn.ModuleDict

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    @classmethod
    def check_aux_heads(cls, requested: Iterable[str], known: Sequence[str]) -> None:
        unknown = set(requested) - set(known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} aux_heads {sorted(unknown)}; choose from {list(known)}")

    def remove_aux_heads(self, names: Iterable[str] | None = None) -> None:
        """Drop the aux heads ``names`` (all by default): never built into outputs, never trained."""
        for name in list(self.aux_heads) if names is None else list(names):
            del self.aux_heads[name]

    def keep_weighted_aux_heads(self, aux_weights: float | Sequence[float]) -> tuple[list[str], list[float]]:
        """Match loss weights (one for all, or one per head in :attr:`aux_heads` order) to the aux heads;
        remove the heads weighted 0; the kept heads' names and weights."""
        names = list(self.aux_heads)
        weights = [float(aux_weights)] * len(names) if isinstance(aux_weights, (int, float)) else list(aux_weights)
        if len(weights) != len(names):
            raise ConfigError(
                f"model.loss.aux_weights has {len(weights)} values for the network's {len(names)} aux heads {names}"
            )
        self.remove_aux_heads(name for name, weight in zip(names, weights) if weight == 0)
        kept = [(name, weight) for name, weight in zip(names, weights) if weight != 0]
        return [name for name, _ in kept], [weight for _, weight in kept]

    def is_head_parameter(self, name: str) -> bool:
        """Whether the parameter ``name`` (as in ``named_parameters``) trains at the head learning rate."""
        return name.split(".", 1)[0] in self.head_modules

    def is_classifier_parameter(self, name: str) -> bool:
        """Whether the parameter or buffer ``name`` belongs to a layer that follows the class count."""
        return self.classifier_name in name.split(".")[:-1]

    def backbone_weights_url(self, source: str) -> str:
        """Where ``source`` (``"imagenet"``, a path or a URL) points for this network's backbone."""
        raise ConfigError(f"model.backbone_weights: {type(self).__name__} has no ImageNet backbone")

    def load_backbone_weights(self, source: str | Path) -> None:
        """Load ImageNet weights into the backbone: ``"imagenet"``, a local path or a URL."""
        raise ConfigError(f"model.backbone_weights: {type(self).__name__} has no ImageNet backbone")

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        raise NotImplementedError


def network_spec(net: Callable[[int], nn.Module]) -> dict | None:
    """``{"class_path", "init_args"}`` for a network class or a ``functools.partial`` of one."""
    keywords = {}
    if isinstance(net, functools.partial) and not net.args:
        net, keywords = net.func, dict(net.keywords)
    if not isinstance(net, type):
        return None  # an arbitrary factory: load_from_checkpoint then needs net=...
    return {"class_path": f"{net.__module__}.{net.__qualname__}", "init_args": keywords}


def network_from_spec(spec: dict) -> Callable[[int], nn.Module]:
    """The network factory a :func:`network_spec` describes."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return functools.partial(cls, **spec.get("init_args", {}))


def build_network(net: Callable[[int], nn.Module] | dict, num_classes: int) -> SegmentationNetwork:
    """``net`` (a class, a partial of one, or a saved ``{"class_path", "init_args"}`` spec) built for
    ``num_classes``; its own option errors and a network outside the contract are one-line errors."""
    if isinstance(net, dict):  # the spec saved in a checkpoint's hyperparameters
        net = network_from_spec(net)
    try:
        built = net(num_classes)
    except ValueError as error:  # the networks check their own options (widths, branches, dropout, ...)
        raise ConfigError(f"model.net: {error}") from None
    if not isinstance(built, SegmentationNetwork):
        raise ConfigError(
            f"model.net builds a {type(built).__name__}, not a bisenet_pl.models.SegmentationNetwork: "
            "derive the network from it (its docstring says what the module relies on)"
        )
    return built
