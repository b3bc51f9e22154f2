"""The LightningModule's option groups as it receives them (``loss``, ``optimizer``, ``evaluation``), and
the flat names they had before (``--model.lr`` is ``--model.optimizer.lr`` since bisenet-pl 0.2).

Old names keep working wherever they can come from (keyword arguments, checkpoints and their saved
hyperparameters, config files, the command line), each moved into its group with a warning that names it.
With ``--ckpt_path``, options typed on the command line win over the checkpoint's, except those it decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from lightning.pytorch.utilities import rank_zero_warn

from bisenet_pl.errors import ConfigError
from bisenet_pl.evaluation import EvaluationProtocol
from bisenet_pl.losses import LossOptions
from bisenet_pl.optim import OptimizerOptions

#: The module's groups: option name -> its dataclass.
GROUPS: dict[str, type] = {"loss": LossOptions, "optimizer": OptimizerOptions, "evaluation": EvaluationProtocol}

#: Each former flat option of the module -> its group and field. ``loss`` and ``optimizer`` first: they were
#: names (``loss: ohem``) and are groups now, so a name is moved before another option joins its group.
RENAMED: dict[str, tuple[str, str]] = {
    "loss": ("loss", "name"),
    "optimizer": ("optimizer", "name"),
    **{name: ("loss", name) for name in ("ohem_threshold", "ohem_min_kept_fraction", "class_weights", "aux_weights")},
    **{
        name: ("optimizer", name)
        for name in ("lr", "momentum", "weight_decay", "head_lr_multiplier", "warmup_steps", "warmup_ratio")
    },
    "poly_power": ("optimizer", "poly_power"),
    **{f"eval_{name}": ("evaluation", name) for name in ("mode", "scales", "flip", "crop_size", "crop_stride")},
}

Options = TypeVar("Options")


def is_renamed(name: str, value: object = None) -> bool:
    """Whether ``name`` (with ``value``) is a former flat option: ``loss``/``optimizer`` only when a name."""
    return name in RENAMED and not (name in GROUPS and (value is None or isinstance(value, Mapping)))


def upgrade_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A model section (a config's ``model:``, a checkpoint's hyperparameters) with every former flat
    option moved into its group; one warning, naming ``where`` and each move, if any moved."""
    upgraded = {key: plain(value) if key in GROUPS else value for key, value in options.items()}
    moves = []
    for old, (group, field) in RENAMED.items():
        if old in upgraded and is_renamed(old, upgraded[old]):
            value = upgraded.pop(old)
            upgraded[group] = {**(upgraded.get(group) or {}), field: value}
            moves.append(f"model.{old} -> model.{group}.{field}")
    if moves:
        rank_zero_warn(
            f"{where}: read with the options' new names ({', '.join(moves)}); the module's options are grouped "
            "since bisenet-pl 0.2"
        )
    return upgraded


def read_checkpoint_lazily(path: str | Path) -> dict:
    """A Lightning checkpoint with its tensors memory-mapped, not read: its hyperparameters are looked at
    before Lightning reads the file itself."""
    import torch

    stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return stored if isinstance(stored, dict) else {}


def plain(options: object) -> object:
    """A group as plain data (dicts, lists, numbers and strings), as checkpoints and YAML hold it."""
    if is_dataclass(options) and not isinstance(options, type):
        return json.loads(json.dumps(asdict(options)))
    return dict(options) if isinstance(options, Mapping) else options


def as_group(kind: type[Options], given: Options | Mapping | None, overrides: Mapping[str, Any]) -> Options:
    """``given`` (the dataclass, its fields as a mapping, or ``None`` for the defaults) as a ``kind``, with
    ``overrides`` (fields from former flat options) laid over it."""
    known = {field.name for field in fields(kind)}
    values = {} if given is None else plain(given)
    if not isinstance(values, Mapping):
        raise ConfigError(f"model.{_group_name(kind)} must be a mapping of {sorted(known)}; got {given!r}")
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"model.{_group_name(kind)} has no option {', '.join(unknown)}; it has {', '.join(sorted(known))}"
        )
    if isinstance(given, kind) and not overrides:
        return given
    return kind(**{**values, **overrides})


def module_groups(groups: Mapping[str, object], renamed: Mapping[str, Any]) -> dict[str, Any]:
    """The module's ``loss``, ``optimizer`` and ``evaluation`` as their dataclasses, from what its
    ``__init__`` was given: the groups (dataclasses, mappings, or a former ``loss``/``optimizer`` name)
    and ``renamed``, any former flat options passed as keyword arguments (a checkpoint of an older
    version, code written for one)."""
    legacy = dict(renamed) | {name: value for name, value in groups.items() if is_renamed(name, value)}
    unknown = sorted(name for name in legacy if name not in RENAMED)
    if unknown:
        raise ConfigError(f"SegmentationModule has no option {', '.join(unknown)}")
    moved = upgrade_options(legacy, "SegmentationModule") if legacy else {}
    return {
        name: as_group(kind, None if is_renamed(name, groups[name]) else groups[name], moved.get(name, {}))
        for name, kind in GROUPS.items()
    }


def _group_name(kind: type) -> str:
    return next(name for name, group in GROUPS.items() if group is kind)


SUBCOMMANDS = ("fit", "validate", "test", "predict")


def upgrade_command_line(argv: list[str]) -> list[str]:
    """``argv`` with former flat model options moved into their groups: typed ones (``--model.lr=0.1``)
    renamed, and config files that hold any given as their upgraded text (the file itself is left as it
    is); a warning names each."""
    upgraded, index = [], 0
    while index < len(argv):
        token = argv[index]
        name, has_value, value = token.partition("=")
        if not has_value and index + 1 < len(argv) and not argv[index + 1].startswith("-"):
            following = argv[index + 1]  # ``--option value``
        else:
            following = None
        if name in ("--config", "-c") and (value or following):
            path = value or following
            upgraded += [name, _upgraded_config(path)]
            index += 2 if following is not None and not has_value else 1
            continue
        option = name.removeprefix("--model.")
        given = value if has_value else following
        if name.startswith("--model.") and is_renamed(option, _as_mapping(given)):
            group, field = RENAMED[option]
            rank_zero_warn(f"--model.{option} is now --model.{group}.{field} (read as it)")
            token = f"--model.{group}.{field}" + (f"={value}" if has_value else "")
        upgraded.append(token)
        index += 1
    return upgraded


def _as_mapping(text: str | None) -> object:
    """``{...}`` typed as a group's value reads as a mapping; anything else stays text."""
    return {} if text is not None and text.lstrip().startswith("{") else text


def _upgraded_config(path: str) -> str:
    """A config file's path, or its upgraded text where its model section has former flat options."""
    if not Path(path).is_file():
        return path  # a config string, or a missing file the parser reports
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return path  # the parser says what is wrong with it
    if not isinstance(config, dict):
        return path
    sections = [config] + [config[name] for name in SUBCOMMANDS if isinstance(config.get(name), dict)]
    changed = False
    for section in sections:
        model = section.get("model")
        if isinstance(model, dict) and any(is_renamed(key, value) for key, value in model.items()):
            section["model"] = upgrade_options(model, path)
            changed = True
    return yaml.safe_dump(config, sort_keys=False) if changed else path


#: Model options a checkpoint always decides: the network's shape and what the data links.
CHECKPOINT_DECIDES = ("net", "num_classes", "ignore_index", "class_names")


def restore_user_model_options(typed, model, parser) -> None:
    """Undo Lightning's overwrite of user-set model options by a ``--ckpt_path``'s hyperparameters.

    Since Lightning 2.5.5, ``LightningCLI`` lays the checkpoint's saved hyperparameters over the
    parsed config, command line included, so ``--model.evaluation.mode=msf`` with a checkpoint
    evaluated ``ss``. ``typed`` is the model config as parsed; options in it that differ from
    the ``parser``'s defaults win again in ``model``; options left at their default, and the
    network itself, come from the checkpoint.
    """
    defaults = parser.get_defaults()["model"]
    for key, value in typed.items():
        if key.split(".", 1)[0] in CHECKPOINT_DECIDES:
            continue
        if value != defaults.get(key):
            model[key] = value
