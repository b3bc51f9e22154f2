"""The LightningModule's weights: where a run starts from (``model.pretrained``, ImageNet backbone
weights), and a trained module loaded or saved in one call (:meth:`PretrainedWeights.from_pretrained`,
:meth:`PretrainedWeights.save_pretrained`)."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info

from bisenet_pl.errors import ConfigError
from bisenet_pl.models.hub import save_pretrained
from bisenet_pl.models.weights import (
    StoredWeights,
    WeightsInfo,
    load_network_weights,
    read_state_dict,
    read_weights_info,
)
from bisenet_pl.module_options import is_renamed, plain, read_checkpoint_lazily, upgrade_options


class PretrainedWeights:
    """Weight loading and saving of :class:`bisenet_pl.module.SegmentationModule` (a mixin: it uses the
    module's ``net``, ``hparams`` and data-linked options)."""

    _weights_loaded = False  # setup() runs once per trainer call; load once
    weights_info: WeightsInfo | None = None  # what the file it was loaded from says (normalisation, colours)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``; a checkpoint of an older version, whose hyperparameters
        hold the module's former flat options, is read under their new names (with a warning)."""
        if isinstance(checkpoint_path, str | Path) and Path(checkpoint_path).is_file():
            stored = read_checkpoint_lazily(checkpoint_path)
            hparams = stored.get("hyper_parameters")
            if isinstance(hparams, dict) and any(is_renamed(key, value) for key, value in hparams.items()):
                stored["hyper_parameters"] = upgrade_options(hparams, str(checkpoint_path))
                checkpoint_path = io.BytesIO()
                torch.save(stored, checkpoint_path)
                checkpoint_path.seek(0)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, source: str | Path | StoredWeights, **options) -> PretrainedWeights:
        """A module in eval mode, in one call, from released weights (``"bisenetv2_camvid"``), a file
        of ``bisenet-pl export --format weights`` or a checkpoint of ``bisenet-pl fit``: the network,
        the class count and names and the ignored label come from the file; ``options`` are the other
        arguments (``evaluation={"mode": "msf"}``, ...). Aux heads are not built unless the loss's
        ``aux_weights`` are given.
        """
        source = StoredWeights.read(source)  # read once: described, then loaded
        info = read_weights_info(source)
        if info.network is None or info.num_classes is None:
            raise ConfigError(
                f"{source} does not say which network it fits (a plain state dict): build "
                "SegmentationModule(net=..., num_classes=..., pretrained=...) instead"
            )
        known = {"ignore_index": info.ignore_index, "class_names": info.class_names}
        options = {k: v for k, v in known.items() if v is not None} | options
        loss = plain(options.get("loss")) if options.get("loss") is not None else {}
        if isinstance(loss, dict) and "aux_weights" not in loss and "aux_weights" not in options:
            options["loss"] = loss | {"aux_weights": 0.0}
        module = cls(net=info.network, num_classes=info.num_classes, pretrained=str(source), **options)
        module.load_pretrained(source, classes_from_file=True)
        module._weights_loaded = True
        module.weights_info = info  # its data's normalisation and colours, for save_pretrained
        return module.eval()

    def save_pretrained(self, directory: str | Path, **card) -> Path:
        """Write the network (aux heads dropped) to ``directory`` in the Hugging Face Hub's layout
        (:func:`bisenet_pl.models.hub.save_pretrained`; ``card``: its ``results``, ``dataset`` and
        ``description``), loadable with :meth:`from_pretrained`. The normalisation and colours are
        those of the weights this module was loaded from, else of the trainer's datamodule."""
        info = copy.deepcopy(self.weights_info) if self.weights_info else WeightsInfo()
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None:
            info.mean, info.std = list(datamodule.mean), list(datamodule.std)
            info.palette = [list(colour) for colour in datamodule.palette]
        if info.mean is None or info.std is None:
            raise ConfigError(
                "save_pretrained needs the training data's normalisation: load the module with from_pretrained, or "
                "save it while a trainer with its datamodule is attached"
            )
        info.network, info.num_classes = self.hparams.net, self.num_classes
        info.ignore_index, info.class_names = self.ignore_index, list(self.class_names)
        state = {key: value for key, value in self.net.state_dict().items() if not key.startswith("aux_heads.")}
        return save_pretrained(state, info, directory, **card)

    def prepare_data(self) -> None:
        # Download remote weights once per node (rank 0) into the torch.hub cache.
        backbone = self.hparams.backbone_weights
        for source in (self.hparams.pretrained, self.net.backbone_weights_url(backbone) if backbone else None):
            if source and "://" in source:
                read_state_dict(source)

    def load_initial_weights(self, stage: str) -> None:
        """``model.pretrained`` (or, fitting without it, ``model.backbone_weights``), once per module."""
        if self._weights_loaded:
            return
        self._weights_loaded = True
        if self.hparams.backbone_weights and stage == "fit" and not self.hparams.pretrained:
            self.net.load_backbone_weights(self.hparams.backbone_weights)
            rank_zero_info(f"Loaded backbone weights from {self.hparams.backbone_weights}")
        if self.hparams.pretrained:
            self.load_pretrained(self.hparams.pretrained)

    def load_pretrained(self, source: str | Path, classes_from_file: bool = False) -> None:
        """Initialise the network from a checkpoint of ours, a state dict, or a CoinCheung .pth
        (see :func:`bisenet_pl.models.weights.load_network_weights`)."""
        for line in load_network_weights(self.net, source, classes_from_file):
            rank_zero_info(line)
