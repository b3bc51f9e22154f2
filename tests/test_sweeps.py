"""Every W&B sweep file runs through the CLI: each grid combination, a sample of each search,
with the agent's own argument formatting and --trainer.fast_dev_run, without a W&B server."""

import itertools
import math
import random
from pathlib import Path

import pytest
import yaml
from synthetic import make_camvid_segnet
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from bisenet_pl.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
SEARCH_SAMPLES = 2


def draw(spec: dict, rng: random.Random):
    """One value of a W&B parameter spec (the distributions the sweep files use)."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    low, high = spec["min"], spec["max"]
    distribution = spec.get("distribution", "uniform")
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if distribution == "uniform":
        return rng.uniform(low, high)
    if distribution == "int_uniform":
        return rng.randint(low, high)
    raise AssertionError(f"the test does not know W&B distribution {distribution!r}")


def parameter_sets(sweep: dict) -> list[dict]:
    """Every combination of a grid; a seeded sample of a random or Bayesian search."""
    parameters = sweep["parameters"]
    if sweep["method"] == "grid":
        names = list(parameters)
        choices = [spec["values"] if "values" in spec else [spec["value"]] for spec in parameters.values()]
        return [dict(zip(names, combination)) for combination in itertools.product(*choices)]
    rng = random.Random(0)
    return [{name: draw(spec, rng) for name, spec in parameters.items()} for _ in range(SEARCH_SAMPLES)]


def agent_command(sweep: dict, parameters: dict) -> list[str]:
    """The command line the W&B agent runs, formatted by the agent's own code."""
    args = create_sweep_command_args({"args": {name: {"value": value} for name, value in parameters.items()}})["args"]
    command = []
    for part in sweep["command"]:
        command += args if part == "${args}" else [part]
    return command


CASES = [
    pytest.param(path, parameters, id=f"{path.stem}-{index}")
    for path in SWEEPS
    for index, parameters in enumerate(parameter_sets(yaml.safe_load(path.read_text())))
]


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
        assert sweep["metric"] == {"name": "val/mIoU", "goal": "maximize"}, path.name
        assert sweep["command"][:2] == ["bisenet-pl", "fit"] and sweep["command"][-1] == "${args}", path.name


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    return make_camvid_segnet(tmp_path_factory.mktemp("sweeps") / "camvid", {"train": 2, "val": 1, "test": 1})


@pytest.mark.parametrize("path, parameters", CASES)
def test_sweep_arguments_are_accepted(path, parameters, camvid, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the agent runs from the repository root
    command = agent_command(yaml.safe_load(path.read_text()), parameters)
    assert command[0] == "bisenet-pl"
    tiny = [
        f"--data.root={camvid}", "--data.batch_size=2", "--data.num_workers=0", "--data.crop_size=[32,48]",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--progress_bar.refresh_rate=0",
        f"--trainer.logger.init_args.save_dir={tmp_path}", f"--trainer.default_root_dir={tmp_path}",
        "--trainer.fast_dev_run=true",
    ]  # fmt: skip
    cli = build_cli([*command[1:], *tiny])
    assert cli.trainer.state.finished and cli.trainer.global_step == 1
    for name, value in parameters.items():  # each swept value reached the run's config
        assert cli.config["fit"][name] == pytest.approx(value), name
