"""Weights in the Hugging Face Hub's layout: save_pretrained / from_pretrained round trips, export
--format hub, a repository read from a pre-filled Hub cache offline, and damaged folders refused."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from bisenet_pl.cli import main
from bisenet_pl.errors import ConfigError
from bisenet_pl.models.hub import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME, push_to_hub
from bisenet_pl.module import SegmentationModule


@pytest.fixture(scope="module")
def released():
    return SegmentationModule.from_pretrained("bisenetv2_camvid")


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def folder(released, tmp_path):
    return released.save_pretrained(tmp_path / "bisenetv2_camvid", results={"test": 53.3}, dataset="CamVid")


def card_metadata(folder: Path) -> dict:
    text = (folder / CARD_NAME).read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_save_then_load_gives_the_same_network_and_description(released, folder, image):
    assert sorted(p.name for p in folder.iterdir()) == sorted([CARD_NAME, CONFIG_NAME, WEIGHTS_NAME])
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["library_name"] == "bisenet-pl" and config["num_classes"] == 11
    assert config["class_names"][:2] == ["Sky", "Building"] and len(config["palette"]) == 11
    assert config["network"]["class_path"] == "bisenet_pl.models.BiSeNetV2"
    assert not any(key.startswith("aux_heads.") for key in load_file(folder / WEIGHTS_NAME))
    loaded = SegmentationModule.from_pretrained(folder)
    assert loaded.class_names == released.class_names and loaded.weights_info.mean == released.weights_info.mean
    with torch.no_grad():
        assert torch.equal(loaded(image), released(image))
    # Saved again from the loaded module: the same tensors.
    again = loaded.save_pretrained(folder.parent / "again")
    assert all(torch.equal(v, load_file(folder / WEIGHTS_NAME)[k]) for k, v in load_file(again / WEIGHTS_NAME).items())


def test_the_model_card_carries_the_hubs_metadata(folder):
    metadata = card_metadata(folder)
    assert metadata["library_name"] == "bisenet-pl" and metadata["pipeline_tag"] == "image-segmentation"
    assert metadata["datasets"] == ["camvid"] and metadata["metrics"] == ["mean_iou"]
    (result,) = metadata["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test" and result["metrics"][0] == {
        "type": "mean_iou",
        "name": "mIoU (test)",
        "value": 53.3,
    }


def test_a_repository_comes_from_the_hub_cache_offline(folder, image, monkeypatch, tmp_path):
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # tests/conftest.py: no test reaches the network
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--bisenetv2-camvid" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())
    (cache / "models--someone--bisenetv2-camvid" / "refs").mkdir()
    (cache / "models--someone--bisenetv2-camvid" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    by_name = SegmentationModule.from_pretrained("someone/bisenetv2-camvid")
    with torch.no_grad():
        assert torch.equal(by_name(image), SegmentationModule.from_pretrained(folder)(image))
    with pytest.raises(
        ConfigError, match=r"^someone/missing: no such local file or folder, and not in the Hugging Face"
    ):
        SegmentationModule.from_pretrained("someone/missing")


def test_export_writes_a_hub_folder_that_loads_everywhere_a_weights_file_does(tmp_path, image, capsys):
    output = tmp_path / "exported"
    main(["export", "--model.pretrained=bisenetv2_camvid", "--format", "hub", f"--output={output}"])
    assert "wrote" in capsys.readouterr().out and (output / WEIGHTS_NAME).is_file()
    with torch.no_grad():
        expected = SegmentationModule.from_pretrained("bisenetv2_camvid")(image)
        assert torch.equal(SegmentationModule.from_pretrained(output)(image), expected)
    # A folder that is not in this layout is never written over.
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(SystemExit, match=r"notes exists and is not a folder of weights in the Hub's layout"):
        main(["export", "--model.pretrained=bisenetv2_camvid", "--format", "hub", f"--output={tmp_path / 'notes'}"])
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match=r"todo.txt exists and is not a folder of weights .* \(it is a file\)"):
        main([
            "export", "--model.pretrained=bisenetv2_camvid", "--format", "hub",
            f"--output={tmp_path / 'notes' / 'todo.txt'}",
        ])  # fmt: skip
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match=r"--format hub writes the network's weights: --precision"):
        main(["export", "--model.pretrained=bisenetv2_camvid", "--format", "hub", "--precision", "int8"])


def test_damaged_folders_are_one_clear_line(folder):
    state = load_file(folder / WEIGHTS_NAME)
    key = "detail_branch.stage1.0.conv.weight"
    state[key] = torch.zeros(3, 3, 3, 3)
    save_file(state, folder / WEIGHTS_NAME)
    with pytest.raises(ConfigError, match=rf"does not fit this network: shapes differ for \['{key}'\]"):
        SegmentationModule.from_pretrained(folder)
    (folder / WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match=r"model.safetensors is not a readable safetensors file"):
        SegmentationModule.from_pretrained(folder)
    os.remove(folder / CONFIG_NAME)
    with pytest.raises(ConfigError, match=r"has no config.json: a folder of weights holds config.json and model"):
        SegmentationModule.from_pretrained(folder)


def test_pushing_needs_a_token(folder, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match=r"to someone/name needs a Hugging Face token: set HF_TOKEN or log in"):
        push_to_hub(folder, "someone/name")
