"""Reading state dicts from files, URLs or the weights released with the package, writing weights
files for inference, and comparing state dicts with a network's."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch

from bisenet_pl.errors import ConfigError
from bisenet_pl.files import atomic_write
from bisenet_pl.models.base import SegmentationNetwork
from bisenet_pl.models.convert import convert_coincheung_state_dict, detect_coincheung_architecture
from bisenet_pl.models.hub import CONFIG_NAME, WEIGHTS_NAME, download, is_repo_id, read_hub_folder

#: Weights released with the package, by name (``--model.pretrained=bisenetv2_camvid``): the
#: repository's ``weights/`` folder, installed as the package data ``bisenet_pl.weights``.
RELEASED_WEIGHTS = ("bisenetv2_camvid",)
#: What a weights file written by :func:`save_inference_weights` says it is.
WEIGHTS_FORMAT = "bisenet-pl inference weights"


def released_weights_path(name: str) -> Path:
    """The packaged file of released weights ``name`` (one of :data:`RELEASED_WEIGHTS`)."""
    return Path(str(resources.files("bisenet_pl.weights").joinpath(f"{name}.pt")))


def weights_location(source: str | Path) -> str:
    """``source`` itself, or the packaged file when it names released weights and no such path exists."""
    source = str(source)
    if source in RELEASED_WEIGHTS and not Path(source).exists():
        return str(released_weights_path(source))
    return source


@dataclass(frozen=True)
class StoredWeights:
    """A weights file or checkpoint read once (:meth:`read`): every function here that takes a source
    takes one of these too, so that a command that needs a file's description, its tensors and a check
    of its kind reads it from disk or the network a single time."""

    source: str
    content: object

    @classmethod
    def read(cls, source: str | Path | StoredWeights) -> StoredWeights:
        return source if isinstance(source, StoredWeights) else cls(str(source), read_checkpoint(source))

    def __str__(self) -> str:
        return self.source


def read_checkpoint(source: str | Path | StoredWeights) -> object:
    """A weights file or checkpoint as stored, from a local path, a released name or a URL (cached
    in torch.hub's directory); a folder in the Hub's layout or a Hub repository ``org/name``
    (:mod:`bisenet_pl.models.hub`) as a weights file would hold it. Loading uses
    ``weights_only=True``: a file that needs arbitrary code is refused."""
    if isinstance(source, StoredWeights):
        return source.content
    source = weights_location(source)
    if is_repo_id(source):
        return {"format": WEIGHTS_FORMAT, **read_hub_folder(download(source))}
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
        if path.is_dir():
            if (path / CONFIG_NAME).exists() or (path / WEIGHTS_NAME).exists():
                return {"format": WEIGHTS_FORMAT, **read_hub_folder(path)}
            raise ConfigError(
                f"{path} is a folder, not a weights file: give the .pt, .pth or .ckpt file itself, or a folder "
                f"holding {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        if not path.is_file():
            raise FileNotFoundError(
                f"weights file {path} does not exist (expected a local .pt/.pth file, an http(s):// or file:// URL, "
                f"or released weights: {', '.join(RELEASED_WEIGHTS)})"
            )
        state = load_file(path)
    return state


def read_state_dict(source: str | Path | StoredWeights) -> dict[str, torch.Tensor]:
    """The state dict in a local file, a released name or a URL (see :func:`read_checkpoint`).

    A Lightning checkpoint's or weights file's ``state_dict`` (or a ``model`` entry) is unwrapped.
    """
    state = read_checkpoint(source)
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


def check_lightning_checkpoint(path: str | Path | StoredWeights, option: str = "--ckpt_path") -> None:
    """Fail in words unless ``path`` is a readable checkpoint written by a Lightning trainer."""
    checkpoint = path.content if isinstance(path, StoredWeights) else load_file(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(
            f"{option} {path} is not a checkpoint written by bisenet-pl fit (no state_dict); to start from a "
            f"network's weights, give it as --model.pretrained={path}"
        )


@dataclass
class WeightsInfo:
    """What a weights file or a checkpoint of ``bisenet-pl fit`` says about itself.

    ``network`` is the ``{"class_path", "init_args"}`` spec of the network the weights fit;
    ``mean``, ``std`` and ``palette`` describe the training data (RGB normalisation of 0..1 pixel
    values, a colour per class); ``training`` is free-form provenance. Fields a file does not hold
    are ``None`` (a plain state dict holds none).
    """

    network: dict | None = None
    num_classes: int | None = None
    ignore_index: int | None = None
    class_names: list[str] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    palette: list[list[int]] | None = None
    training: dict = field(default_factory=dict)


def read_weights_info(source: str | Path | StoredWeights) -> WeightsInfo:
    """The :class:`WeightsInfo` of a weights file, a released name or a Lightning checkpoint."""
    stored = read_checkpoint(source)
    if not isinstance(stored, dict):
        return WeightsInfo()
    if stored.get("format") == WEIGHTS_FORMAT:
        return WeightsInfo(**{key: stored[key] for key in WeightsInfo.__dataclass_fields__ if key in stored})
    hyperparameters = stored.get("hyper_parameters")
    if isinstance(hyperparameters, dict) and isinstance(hyperparameters.get("net"), dict):  # bisenet-pl fit
        return WeightsInfo(
            network=hyperparameters["net"],
            num_classes=hyperparameters.get("num_classes"),
            ignore_index=hyperparameters.get("ignore_index"),
            class_names=hyperparameters.get("class_names"),
            training={"global_step": stored.get("global_step"), "epoch": stored.get("epoch")},
        )
    return WeightsInfo()


def save_inference_weights(state_dict: Mapping[str, torch.Tensor], info: WeightsInfo, path: Path) -> None:
    """Write ``state_dict`` (a network's, aux heads already dropped) for inference: floating-point
    tensors in float16, with ``info`` beside them as plain data. The file loads wherever a state
    dict does (``--model.pretrained``) and tells :func:`read_weights_info` what it fits."""
    state = {
        key: value.detach().cpu().half() if value.is_floating_point() else value.detach().cpu()
        for key, value in state_dict.items()
    }
    payload = {"format": WEIGHTS_FORMAT, "state_dict": state} | {
        key: getattr(info, key) for key in WeightsInfo.__dataclass_fields__
    }
    with atomic_write(path) as partial:
        torch.save(payload, partial)


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


def load_network_weights(
    net: SegmentationNetwork, source: str | Path | StoredWeights, classes_from_file: bool = False
) -> list[str]:
    """Initialise ``net`` from a checkpoint of ``bisenet-pl fit``, a weights file, a state dict or a
    CoinCheung/BiSeNet ``.pth`` (converted); return what was done, one line each, for the log.

    Classifiers of another class count are re-initialised (unless ``classes_from_file``: ``net`` was
    built for the class count the file states, so its tensors must have it), tensors of aux heads
    ``net`` does not build are skipped, anything else must fit, and every tensor must be finite (a
    one-line :class:`ConfigError` otherwise).
    """
    state = read_state_dict(source)
    damaged = [
        key
        for key, value in state.items()
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all()
    ]
    if damaged:
        raise ConfigError(
            f"{source}: {len(damaged)} tensor(s) hold NaN or infinite values (e.g. {damaged[0]}): the file is damaged "
            "or the training it comes from diverged"
        )
    if any(key.startswith("net.") for key in state):  # a LightningModule checkpoint
        state = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
    else:
        try:
            detect_coincheung_architecture(state)
        except ConfigError:
            pass
        else:
            state = convert_coincheung_state_dict(state)
    state = {key.removeprefix("_orig_mod."): value for key, value in state.items()}  # saved from torch.compile(net)
    diff = compare_state_dicts(net.state_dict(), state)
    reinitialised, skipped, missing = diff.wrong_shape, diff.unexpected, diff.missing
    if not all(net.is_classifier_parameter(k) for k in reinitialised):
        raise ConfigError(f"{source} does not fit this network: shapes differ for {reinitialised[:5]}")
    if classes_from_file and reinitialised:
        raise ConfigError(
            f"{source} says it predicts {net.num_classes} classes but its classifier {reinitialised[0]} has "
            f"{state[reinitialised[0]].shape[0]}: the file's description contradicts its tensors"
        )
    if [k for k in missing if not net.is_classifier_parameter(k) and not k.startswith("aux_heads.")]:
        raise ConfigError(f"{source} does not fit this network: missing {missing[:5]}")
    keep = state.keys() - set(skipped) - set(reinitialised)
    net.load_state_dict({k: state[k] for k in keep}, strict=False)
    report = [f"Loaded pretrained weights from {source}"]
    if reinitialised:
        report.append(
            f"Re-initialised classifier layers for {net.num_classes} classes (the checkpoint has "
            f"{state[reinitialised[0]].shape[0]}): {', '.join(reinitialised)}"
        )
    if skipped:
        report.append(f"Ignored {len(skipped)} checkpoint tensors this network does not have (e.g. {skipped[0]})")
    if missing:
        only_booster_heads = all(key.startswith("aux_heads.") for key in missing)
        why = ": booster heads, which only training uses (a weights file for inference leaves them out)"
        report.append(
            f"Kept fresh initialisation for {len(missing)} tensors not in the checkpoint (e.g. {missing[0]})"
            + (why if only_booster_heads else "")
        )
    return report


def check_checkpoint_fits(
    expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor], classifier_key: str, num_classes: int
) -> None:
    """Refuse in words a checkpoint (``--ckpt_path``) whose tensors do not fit the module's."""
    wrong = compare_state_dicts(expected, given).wrong_shape
    if classifier_key in wrong:
        raise ConfigError(
            f"the checkpoint predicts {given[classifier_key].shape[0]} classes but this data has {num_classes}: "
            "use it as --model.pretrained=CHECKPOINT to fine-tune (classifiers re-initialised) instead of --ckpt_path"
        )
    if wrong:
        raise ConfigError(f"the checkpoint does not fit this network: shapes differ for {wrong[:3]}")
