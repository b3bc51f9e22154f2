"""Every W&B sweep file runs through the CLI: each grid combination, a sample of each search,
with the agent's own argument formatting and --trainer.fast_dev_run, without a W&B server."""

import random
from pathlib import Path

import pytest
import yaml

from bisenet_pl.cli import build_cli
from bisenet_pl.sweep import agent_arguments, draw
from bisenet_pl.sweep import parameter_sets as sweep_parameter_sets

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
SEARCH_SAMPLES = 2


def parameter_sets(sweep: dict) -> list[dict]:
    """Every combination of a grid; a seeded sample of a random or Bayesian search (bisenet-pl sweep
    draws the same way; a Bayesian search it leaves to the agent, so the sample is drawn here)."""
    if sweep["method"] == "grid":
        return sweep_parameter_sets(sweep)
    rng = random.Random(0)
    return [{name: draw(spec, rng) for name, spec in sweep["parameters"].items()} for _ in range(SEARCH_SAMPLES)]


def agent_command(sweep: dict, parameters: dict) -> list[str]:
    """The command line the W&B agent runs, formatted by the agent's own code."""
    args = agent_arguments(parameters)
    command = []
    for part in sweep["command"]:
        command += args if part == "${args}" else [part]
    return command


def sweep_cases() -> list:
    """Every grid combination of every sweep file, each run once: a combination another file already
    sweeps with the same base config (cpu_study_3000.yaml repeats cpu_study.yaml's rows) is not fitted twice."""
    cases, seen = [], set()
    for path in SWEEPS:
        sweep = yaml.safe_load(path.read_text())
        base = [part for part in sweep["command"] if part.startswith("--config")]
        for index, parameters in enumerate(parameter_sets(sweep)):
            key = repr((base, parameters))
            if key not in seen:
                seen.add(key)
                cases.append(pytest.param(path, parameters, id=f"{path.stem}-{index}"))
    return cases


CASES = sweep_cases()


def test_sweeps_cover_the_paper_ablations():
    names = {path.stem for path in SWEEPS}
    assert {
        "v2_components",
        "v2_aggregation",
        "v2_boosters",
        "v2_semantic_width",
        "v1_components",
        "lr_aux_search",
    } <= names
    for path in SWEEPS:
        sweep = yaml.safe_load(path.read_text())
        dev = any(part.startswith("--data.dev_sequences=") for part in sweep["command"])
        assert sweep["metric"] == {"name": "dev/mIoU" if dev else "val/mIoU", "goal": "maximize"}, path.name
        assert sweep["command"][:2] == ["bisenet-pl", "fit"] and sweep["command"][-1] == "${args}", path.name


@pytest.mark.parametrize("path, parameters", CASES)
def test_sweep_arguments_are_accepted(path, parameters, camvid, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the agent runs from the repository root
    command = agent_command(yaml.safe_load(path.read_text()), parameters)
    assert command[0] == "bisenet-pl"
    tiny = [
        f"--data.root={camvid}", "--data.batch_size=2", "--data.num_workers=0", "--data.crop_size=[32,48]",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--progress_bar.refresh_rate=0",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.fast_dev_run=true",
        "--model.channels_last=false",  # not the memory format's measurement at each swept crop
    ]  # fmt: skip
    # Swept values stay as swept, but for the batch size: the tiny CamVid has 2 training images.
    tiny = [arg for arg in tiny if arg.partition("=")[0][2:] not in set(parameters) - {"data.batch_size"}]
    cli = build_cli([*command[1:], *tiny])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    for name, value in parameters.items():  # each swept value reached the run's config
        if name != "data.batch_size":
            assert_swept_value(configured(cli.config["fit"], name), value, name)


def configured(config, name: str):
    """The value of option ``name`` in a parsed config (``data.crop_size`` is the DataModule's init_args)."""
    try:
        return config[name]
    except KeyError:
        group, _, option = name.partition(".")
        return config[group]["init_args"][option]


def assert_swept_value(given, value, name: str) -> None:
    if isinstance(value, dict):  # a whole component: its class and the arguments the sweep sets
        assert given.class_path == value["class_path"], name
        assert all(given.init_args[key] == item for key, item in value.get("init_args", {}).items()), name
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):  # e.g. trainer.callbacks
        assert len(given) == len(value), name
        for given_item, item in zip(given, value):
            assert_swept_value(given_item, item, name)
    else:
        assert given == pytest.approx(value), name
