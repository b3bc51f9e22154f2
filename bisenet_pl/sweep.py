"""``bisenet-pl sweep``: the runs of a W&B sweep file, here, one after another, without a W&B server.

The file is the one ``wandb agent`` reads (``sweeps/*.yaml``): a grid is expanded in full, a random
search drawn ``count`` times (seeded, so a second call draws the same runs), each run's command line
formatted by W&B's own agent code, and each combination run once per seed. Every run gets its own
folder (``OUTPUT/<parameters>_seed<S>``) with a CSV log and a W&B offline run (``wandb sync`` uploads
it later); a run that finished is skipped when the sweep is run again, and one that was interrupted
continues from its ``last.ckpt``.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from bisenet_pl.errors import ConfigError

#: The seeds of ``--seeds N``: the first N (42 first, as in every config of this project).
SEEDS = (42, 1, 2, 3, 4, 5, 6, 7, 8, 9)
#: The W&B distributions a random search here draws from (W&B has more; those need its agent).
DISTRIBUTIONS = ("uniform", "int_uniform", "log_uniform_values", "q_uniform")
DONE = "done"  # the marker a finished run leaves in its folder (holding its minutes)


@dataclass(frozen=True)
class SweepRun:
    parameters: dict
    seed: int

    @property
    def name(self) -> str:
        parts = [f"{key.rpartition('.')[2]}={format_value(value)}" for key, value in self.parameters.items()]
        return re.sub(r"[^\w.=,+-]", "", ",".join(parts) or "default") + f"_seed{self.seed}"


def format_value(value) -> str:
    if isinstance(value, dict):  # a whole component (class_path + init_args): its class, then its arguments
        named = "class_path" in value
        arguments = value.get("init_args") or {} if named else value
        parts = [str(value["class_path"]).rpartition(".")[2]] if named else []
        return ",".join(parts + [f"{key}={format_value(item)}" for key, item in arguments.items()])
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "+".join(map(format_value, value)) or "none"
    return str(value)


def load_sweep(path: str | Path) -> dict:
    """A sweep file, checked for what running it here needs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    try:
        sweep = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        raise ConfigError(f"{path} is not a W&B sweep file: expected 'method', 'parameters' and 'command'")
    command = sweep.get("command")
    if not isinstance(command, list) or "${args}" not in command or command[:2] != ["bisenet-pl", "fit"]:
        raise ConfigError(f"{path}: its command must be [bisenet-pl, fit, ..., ${{args}}] (as the agent runs it)")
    if sweep.get("method") not in ("grid", "random", "bayes"):
        raise ConfigError(f"{path}: method must be grid, random or bayes; got {sweep.get('method')!r}")
    for name, spec in sweep["parameters"].items():
        check_parameter(spec, f"{path}: parameter {name}")
    return sweep


def check_parameter(spec, where: str) -> None:
    """Refuse a parameter spec no run could be drawn from, before the first run starts."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping such as {{values: [...]}} or {{value: ...}}; got {spec!r}")
    if "value" in spec:
        return
    if "values" in spec:
        if not isinstance(spec["values"], list) or not spec["values"]:
            raise ConfigError(f"{where}: 'values' must be a non-empty list; got {spec['values']!r}")
        return
    low, high = spec.get("min"), spec.get("max")
    if not all(isinstance(bound, (int, float)) and not isinstance(bound, bool) for bound in (low, high)):
        raise ConfigError(f"{where} needs 'values', 'value' or numbers 'min' and 'max'; got {spec!r}")
    if low > high:
        raise ConfigError(f"{where}: min {low} is above max {high}")
    distribution = spec.get("distribution", "uniform")
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: distribution {distribution!r} is not one of {', '.join(DISTRIBUTIONS)}")
    if distribution == "log_uniform_values" and low <= 0:
        raise ConfigError(f"{where}: log_uniform_values needs min above 0; got {low}")
    if distribution == "q_uniform" and not spec.get("q", 1) > 0:
        raise ConfigError(f"{where}: q must be above 0; got {spec['q']!r}")


def draw(spec: dict, rng: random.Random):
    """One value of a W&B parameter spec."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    low, high = spec["min"], spec["max"]
    distribution = spec.get(
        "distribution", "int_uniform" if isinstance(low, int) and isinstance(high, int) else "uniform"
    )
    if distribution == "uniform":
        return rng.uniform(low, high)
    if distribution == "int_uniform":
        return rng.randint(low, high)
    if distribution == "log_uniform_values":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    if distribution == "q_uniform":
        return round(rng.uniform(low, high) / spec.get("q", 1)) * spec.get("q", 1)
    raise ConfigError(f"sweep parameter distribution {distribution!r} is not one of {', '.join(DISTRIBUTIONS)}")


def parameter_sets(sweep: dict, count: int | None = None) -> list[dict]:
    """Every combination of a grid, or ``count`` seeded draws of a random search."""
    parameters = sweep["parameters"]
    if sweep["method"] == "grid":
        if count is not None:
            raise ConfigError("--count is for random searches; a grid runs every combination")
        choices = []
        for name, spec in parameters.items():
            if "values" not in spec and "value" not in spec:
                raise ConfigError(f"grid parameter {name} needs 'values' or 'value'")
            choices.append(spec["values"] if "values" in spec else [spec["value"]])
        return [dict(zip(parameters, combination)) for combination in itertools.product(*choices)]
    if sweep["method"] == "bayes":
        raise ConfigError(
            "a Bayesian search chooses each run from the ones before on the W&B server: run it with wandb agent, "
            "or set method: random here"
        )
    if count is None:
        raise ConfigError("a random search needs --count N (how many runs to draw)")
    if count < 1:
        raise ConfigError(f"--count must be at least 1; got {count}")
    rng = random.Random(0)
    return [{name: draw(spec, rng) for name, spec in parameters.items()} for _ in range(count)]


def agent_arguments(parameters: dict) -> list[str]:
    """``parameters`` as the W&B agent puts them on the command line (its own formatting code)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    return create_sweep_command_args({"args": {name: {"value": value} for name, value in parameters.items()}})["args"]


def run_command(sweep: dict, run: SweepRun, folder: Path, extra: Sequence[str]) -> list[str]:
    """The run's command line: the sweep's command with ``extra`` and the run's arguments, its seed,
    its folder and both loggers (CSV and W&B offline); ``--ckpt_path=last`` to continue an interrupted run."""
    group = next(
        (part.split("=", 1)[1] for part in sweep["command"] if part.startswith("--trainer.logger.init_args.group=")),
        sweep.get("name", "sweep"),
    )
    loggers = {
        "trainer": {
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(folder), "name": "csv"},
                },
                {
                    "class_path": "bisenet_pl.loggers.WandbLogger",
                    "init_args": {"group": group, "name": run.name, "save_dir": str(folder), "offline": True},
                },
            ]
        }
    }
    (folder / "loggers.yaml").write_text(yaml.safe_dump(loggers, sort_keys=False))
    # ``extra`` before the swept arguments: a config given there must not undo a swept value.
    command = []
    for part in sweep["command"][2:]:
        command += [*extra, *agent_arguments(run.parameters)] if part == "${args}" else [part]
    command += [
        f"--config={folder / 'loggers.yaml'}",
        f"--seed_everything={run.seed}",
        f"--trainer.default_root_dir={folder}",
        "--trainer.enable_progress_bar=false",
    ]
    if list(folder.rglob("last.ckpt")):
        command.append("--ckpt_path=last")
    return ["fit", *command]


def run_sweep(
    path: str | Path,
    seeds: int = 1,
    count: int | None = None,
    output: str | Path | None = None,
    extra: Sequence[str] = (),
) -> list[Path]:
    """Run a sweep file's runs in turn (see the module's docstring); the run folders, in order."""
    sweep = load_sweep(path)
    if not 1 <= seeds <= len(SEEDS):
        raise ConfigError(f"--seeds must be 1..{len(SEEDS)}; got {seeds}")
    runs = [SweepRun(p, seed) for p in parameter_sets(sweep, count) for seed in SEEDS[:seeds]]
    output = Path(output or Path("outputs") / "sweeps" / sweep.get("name", Path(path).stem))
    program = Path(sys.executable).with_name("bisenet-pl")
    environment = os.environ | {"WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    folders = []
    for number, run in enumerate(runs, 1):
        folder = output / run.name
        folders.append(folder)
        if (folder / DONE).is_file():
            print(f"[{number}/{len(runs)}] {run.name}: finished before, skipped", flush=True)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        command = run_command(sweep, run, folder, extra)
        resumed = " (continuing from its last.ckpt)" if command[-1] == "--ckpt_path=last" else ""
        print(f"[{number}/{len(runs)}] {run.name}{resumed}: log in {folder / 'fit.log'}", flush=True)
        started = time.monotonic()
        with open(folder / "fit.log", "a") as log:
            finished = subprocess.run([str(program), *command], stdout=log, stderr=subprocess.STDOUT, env=environment)
        if finished.returncode != 0:
            raise ConfigError(f"sweep run {run.name} failed (exit {finished.returncode}): see {folder / 'fit.log'}")
        minutes = (time.monotonic() - started) / 60
        (folder / DONE).write_text(f"{minutes:.1f} minutes (this call's part of the run)\n")
        print(f"[{number}/{len(runs)}] {run.name}: finished in {minutes:.1f} minutes", flush=True)
    return folders


def summary(folders: Sequence[Path], metric: str) -> str:
    """Best and last ``metric`` of each run folder, one markdown row each."""
    from bisenet_pl.results import collect_local_runs

    rows = ["| run | steps | best | last |", "|---|---|---|---|"]
    for folder in folders:
        for run in collect_local_runs(folder, metric):
            best, last = 100 * run[f"best {metric}"], 100 * run[f"last {metric}"]
            rows.append(f"| {folder.name} | {run['steps']} | {best:.2f} | {last:.2f} |")
    return "\n".join(rows)
