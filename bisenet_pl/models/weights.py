"""Reading state dicts from files or URLs, and comparing them with a network's."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError
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
        try:
            state = torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True, progress=False)
        except (URLError, OSError) as error:  # HTTPError is both
            reason = getattr(error, "reason", None) or error
            raise ConfigError(
                f"could not fetch {source} ({reason}): download it where there is a network and give the local "
                f"file's path instead, or place it in {Path(torch.hub.get_dir()) / 'checkpoints'}"
            ) from None
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
            raise ConfigError(f"{source}: {unreadable_reason(error)}") from None
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} does not exist (expected a local .pth file or an http(s):// or file:// URL)")
        state = load_file(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"{source} does not hold a state dict (got {type(state).__name__})")
    return state


def unreadable_reason(error: BaseException) -> str:
    if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
        return "holds Python objects besides tensors and plain data, which are never loaded (weights_only)"
    return "is not a PyTorch checkpoint (truncated, or another kind of file)"


def load_file(path: str | Path) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that is not a readable checkpoint
    is a one-line :class:`ConfigError` naming it, never the unpickler's traceback."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, IndexError, ValueError, KeyError) as error:
        raise ConfigError(f"{path} {unreadable_reason(error)}") from None


def check_lightning_checkpoint(path: str | Path, option: str = "--ckpt_path") -> None:
    """Fail in words unless ``path`` is a readable checkpoint written by a Lightning trainer."""
    checkpoint = load_file(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"{option} {path} is not a checkpoint written by bisenet-pl fit (no state_dict); to start from a "
            f"network's weights, give it as --model.pretrained={path}"
        )


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
