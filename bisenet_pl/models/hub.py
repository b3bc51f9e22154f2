"""Weights in the Hugging Face Hub's layout: a folder (or a Hub repository) holding ``config.json``
(what the weights fit: the network, the classes, the normalisation and the colours),
``model.safetensors`` and a model card (``README.md``) whose metadata block names the task, the
dataset and the metrics. Reading gives what :func:`~bisenet_pl.models.weights.read_checkpoint` gives
for a weights file, so every place that takes ``--model.pretrained`` takes a folder or ``org/name``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from bisenet_pl.errors import ConfigError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
#: ``config.json``'s ``library_name``: what tells a folder of this project from another library's.
LIBRARY_NAME = "bisenet-pl"
HUB_EXTRA = "pip install 'bisenet-pl[hub]' (huggingface_hub)"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_repo_id(source: str | Path) -> bool:
    """``org/name`` with no such local path and no file suffix of a weights file."""
    text = str(source)
    return bool(_REPO_ID.match(text)) and not Path(text).exists() and Path(text).suffix not in (".pt", ".pth", ".ckpt")


def save_pretrained(
    state_dict: Mapping[str, torch.Tensor],
    info,
    directory: str | Path,
    results: Mapping[str, float] | None = None,
    dataset: str | None = None,
    description: str = "",
) -> Path:
    """Write ``directory`` in the Hub's layout: ``config.json`` from ``info`` (a
    :class:`~bisenet_pl.models.weights.WeightsInfo`), the tensors as stored in ``model.safetensors``,
    and a model card whose metadata lists ``results`` (split name -> mIoU in %) on ``dataset``.

    The folder is written beside its final place and renamed, so a failure leaves nothing behind;
    an existing folder is replaced only when it holds this layout and nothing else.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists():
        ours = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in ours) if directory.is_dir() else []
        if not directory.is_dir() or foreign:
            raise ConfigError(
                f"{directory} exists and is not a folder of weights in the Hub's layout"
                + (f" (it holds {', '.join(foreign[:3])})" if foreign else " (it is a file)")
                + ": give another folder"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)
    config = {"library_name": LIBRARY_NAME, **asdict(info)}
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as scratch:
        partial = Path(scratch) / "folder"
        partial.mkdir()
        tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
        save_file(tensors, partial / WEIGHTS_NAME, metadata={"format": "pt"})
        (partial / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        (partial / CARD_NAME).write_text(model_card(info, results or {}, dataset, description))
        if directory.exists():
            shutil.rmtree(directory)
        partial.rename(directory)
    return directory


def model_card(info, results: Mapping[str, float], dataset: str | None, description: str) -> str:
    """A model card with the Hub's metadata block (task, dataset, metrics) above ``description``."""
    network = (info.network or {}).get("class_path", "").rpartition(".")[2] or "network"
    metadata: dict = {
        "library_name": LIBRARY_NAME,
        "pipeline_tag": "image-segmentation",
        "tags": ["semantic-segmentation", "bisenet", network.lower(), "pytorch-lightning"],
    }
    if dataset:
        metadata["datasets"] = [dataset.lower()]
    if results:
        name = dataset or "unknown"
        metadata["metrics"] = ["mean_iou"]
        metadata["model-index"] = [
            {
                "name": network,
                "results": [
                    {
                        "task": {"type": "image-segmentation", "name": "Semantic segmentation"},
                        "dataset": {"name": name, "type": name.lower(), "split": split},
                        "metrics": [{"type": "mean_iou", "name": f"mIoU ({split})", "value": round(float(value), 2)}],
                    }
                    for split, value in results.items()
                ],
            }
        ]
    classes = ", ".join(info.class_names or [])
    body = description or (
        f"{network} for semantic segmentation of {info.num_classes} classes ({classes}), trained with bisenet-pl."
    )
    usage = (
        "```python\nfrom bisenet_pl.module import SegmentationModule\n\n"
        'model = SegmentationModule.from_pretrained("THIS_FOLDER_OR_ORG/NAME")  # eval mode\n'
        "logits = model(images)  # (N, 3, H, W) RGB in [0, 1], normalised with config.json's mean and std\n```\n"
    )
    return f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n# {network}\n\n{body}\n\n## Use\n\n{usage}"


def read_hub_folder(directory: str | Path) -> dict:
    """The contents of a folder in the Hub's layout as a weights file holds them: the state dict
    and the :class:`~bisenet_pl.models.weights.WeightsInfo` fields."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    layout = f"a folder of weights holds {CONFIG_NAME} and {WEIGHTS_NAME} (bisenet-pl export --format hub)"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ConfigError(f"{directory} has no {path.name}: {layout}")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{config_path} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("library_name") != LIBRARY_NAME:
        raise ConfigError(f"{config_path} does not describe bisenet-pl weights (library_name is not {LIBRARY_NAME!r})")
    try:
        state = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise ConfigError(f"{weights_path} is not a readable safetensors file ({error})") from None
    config.pop("library_name")
    return {"state_dict": state, **config}


def download(repo_id: str, revision: str | None = None) -> Path:
    """The local folder of Hub repository ``repo_id`` (downloaded into, or with ``HF_HUB_OFFLINE=1``
    taken from, huggingface_hub's cache)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        needs = f"reading a Hugging Face Hub repository needs {HUB_EXTRA}"
        raise ConfigError(f"{repo_id}: no such local path; {needs}") from None
    try:
        return Path(
            snapshot_download(repo_id, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME])
        )
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"{repo_id}: no such local file or folder, and not in the Hugging Face Hub cache with the Hub out of "
            "reach (offline): download it where there is a network, or give a local path"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"{repo_id}: no such local file or folder, and the Hugging Face Hub could not give it ({first_line})"
        ) from None


def push_to_hub(directory: str | Path, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a folder written by :func:`save_pretrained` to ``repo_id``; return its URL. Needs a
    token (``token``, ``HF_TOKEN`` or ``hf auth login``)."""
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError:
        raise ConfigError(f"pushing to the Hugging Face Hub needs {HUB_EXTRA}") from None
    read_hub_folder(directory)  # only a complete folder goes up
    token = token or get_token()
    if not token:
        raise ConfigError(f"pushing {directory} to {repo_id} needs a Hugging Face token: set HF_TOKEN or log in")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return str(api.upload_folder(folder_path=str(directory), repo_id=repo_id, commit_message="bisenet-pl weights"))
