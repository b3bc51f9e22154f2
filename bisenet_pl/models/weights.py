"""Reading state dicts from files or URLs, and comparing them with a network's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from bisenet_pl.errors import ConfigError


def read_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file or a URL (cached in torch.hub's directory).

    Loading uses ``weights_only=True``: a checkpoint that needs arbitrary code is refused.
    A Lightning checkpoint's ``state_dict`` (or a ``model`` entry) is unwrapped.
    """
    source = str(source)
    if urlparse(source).scheme in ("http", "https", "file"):
        state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True, progress=False)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist (expected a local .pth file or an http(s):// or file:// URL)")
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"{source} does not hold a state dict (got {type(state).__name__})")
    return state


@dataclass
class StateDictDifference:
    """How a state dict differs from the one a network expects (sorted key lists)."""

    missing: list[str]
    unexpected: list[str]
    wrong_shape: list[str]


def compare_state_dicts(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> StateDictDifference:
    return StateDictDifference(
        missing=sorted(expected.keys() - given.keys()),
        unexpected=sorted(given.keys() - expected.keys()),
        wrong_shape=sorted(k for k in expected.keys() & given.keys() if expected[k].shape != given[k].shape),
    )
