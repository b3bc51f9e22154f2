"""A DataModule from the ``data:`` section of a LightningCLI config file."""

from __future__ import annotations

from pathlib import Path

import yaml
from jsonargparse import ArgumentParser

from bisenet_pl.data.base import SegmentationDataModule
from bisenet_pl.errors import ConfigError


def datamodule_from_config(path: str | Path, root: str | None = None) -> SegmentationDataModule:
    """The DataModule that ``path``'s ``data:`` section (``class_path`` and ``init_args``, as
    ``bisenet-pl fit`` saves it beside its checkpoints) describes, with ``root`` instead of the
    config's when given; nothing is read from disk."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read a config ({error})") from None
    section = document.get("data") if isinstance(document, dict) else None  # a YAML of plain text is a string
    if not isinstance(section, dict):
        raise ConfigError(f"{path} has no data: section with a class_path (expected a config of bisenet-pl fit)")
    if root is not None:
        section = {**section, "init_args": {**section.get("init_args", {}), "root": str(root)}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SegmentationDataModule, "data", required=True)
    try:
        config = parser.parse_object({"data": section})
    except Exception as error:  # jsonargparse's ArgumentError, in words
        raise ConfigError(
            f"{path}: its data: section does not describe a DataModule ({str(error).splitlines()[0]})"
        ) from None
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    return instantiate(config).data
