"""Collect training runs into ablation tables: from local logger folders, or from the W&B API."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: Config keys that differ between runs without being part of the experiment.
BOOKKEEPING_PREFIXES = (
    "config",
    "trainer.logger",
    "trainer.default_root_dir",
    "trainer.callbacks",
    "data.init_args.root",
    "data.init_args.num_workers",
    "ckpt_path",
    "checkpoint.",
    "last_checkpoint.",
    "progress_bar.",
    "val_images.",
    "lr_monitor.",
)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"optimizer": {"lr": 0.05}}}`` -> ``{"model.optimizer.lr": 0.05}``; lists stay values."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def metric_history(run_dir: str | Path, metric: str = "val/mIoU") -> tuple[list[int], list[float]]:
    """Steps and values of ``metric`` in a CSV-logger run folder's metrics.csv."""
    steps, values = [], []
    with open(Path(run_dir) / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get(metric):
                steps.append(int(row.get("step") or 0))
                values.append(float(row[metric]))
    return steps, values


def read_local_run(run_dir: str | Path, metric: str = "val/mIoU") -> dict[str, Any]:
    """A CSV-logger run folder (``config.yaml`` + ``metrics.csv``): its config and its best and last ``metric``."""
    run_dir = Path(run_dir)
    config = flatten(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    steps, values = metric_history(run_dir, metric)
    return {
        "run": str(run_dir),
        "config": config,
        f"best {metric}": max(values) if values else math.nan,
        f"last {metric}": values[-1] if values else math.nan,
        "steps": max(steps) if steps else 0,
    }


def collect_local_runs(root: str | Path, metric: str = "val/mIoU") -> list[dict[str, Any]]:
    """Every run under ``root`` that saved a config and logged ``metric`` to metrics.csv."""
    runs = []
    for config in sorted(Path(root).rglob("config.yaml")):
        if (config.parent / "metrics.csv").is_file():
            run = read_local_run(config.parent, metric)
            if not math.isnan(run[f"best {metric}"]):
                runs.append(run)
    return runs


def collect_wandb_runs(path: str, group: str | None = None, metric: str = "val/mIoU", api=None) -> list[dict[str, Any]]:
    """Runs of a W&B project ``entity/project`` (optionally one group): config and summary ``metric``
    (the best value: the logger keeps the maximum of val/mIoU in the summary)."""
    if api is None:
        import wandb

        api = wandb.Api(timeout=30)
    filters = {"group": group} if group else {}
    runs = []
    for run in api.runs(path, filters=filters):
        value = run.summary.get(metric)
        if isinstance(value, dict):  # a summary with several aggregates
            value = value.get("max", value.get("last"))
        runs.append(
            {
                "run": run.name,
                "config": flatten({k: v for k, v in run.config.items() if not k.startswith("_")}),
                f"best {metric}": float(value) if value is not None else math.nan,
                "steps": run.summary.get("trainer/global_step", 0),
            }
        )
    return runs


def varying_options(runs: Sequence[dict[str, Any]], ignore: Iterable[str] = BOOKKEEPING_PREFIXES) -> list[str]:
    """Config keys whose values differ between runs: the ablation's columns."""
    keys = sorted(set().union(*(run["config"] for run in runs)))
    return [
        key
        for key in keys
        if not key.startswith(tuple(ignore)) and len({repr(run["config"].get(key)) for run in runs}) > 1
    ]


def ablation_table(runs: Sequence[dict[str, Any]], metric: str = "val/mIoU") -> tuple[list[str], list[list[Any]]]:
    """Columns (varying options, then the best metric) and rows sorted best first."""
    options = varying_options(runs)
    column = f"best {metric}"
    rows = [[run["config"].get(option) for option in options] + [run[column]] for run in runs]
    rows.sort(key=lambda row: -row[-1] if not math.isnan(row[-1]) else math.inf)
    return [*options, column], rows


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; metric columns (``best ...``, ``last ...``) shown as percentages."""

    def cell(value: Any, column: str) -> str:
        if isinstance(value, float) and column.startswith(("best ", "last ")):
            return f"{100 * value:.2f}"
        return f"{value:g}" if isinstance(value, float) else str(value)

    names = [c.removeprefix("model.net.init_args.").removeprefix("model.") for c in columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(cell(v, c) for v, c in zip(row, columns)) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Variant:
    """One row of an ablation table: the config values its runs share (flattened keys), and the paper's
    figure for the same row where the paper has one (its own dataset and schedule; say which where shown)."""

    label: str
    config: dict[str, Any]
    paper: float | None = None

    def runs(self, runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [run for run in runs if all(matches(run["config"].get(k, _MISSING), v) for k, v in self.config.items())]


_MISSING = object()


def matches(value: Any, wanted: Any) -> bool:
    """A config value is the one wanted, or passes it where ``wanted`` is a test (e.g. :func:`has_callback`)."""
    return wanted(value) if callable(wanted) else value == wanted


def has_callback(class_name: str, **init_args: Any) -> Callable[[Any], bool]:
    """A test of ``trainer.callbacks``: it holds a callback of that class with those arguments (others as they are)."""

    def test(callbacks: Any) -> bool:
        if not isinstance(callbacks, list):  # none, or the option missing from the run's config
            return False
        return any(
            str(callback.get("class_path", "")).rpartition(".")[2] == class_name
            and all((callback.get("init_args") or {}).get(key, _MISSING) == value for key, value in init_args.items())
            for callback in callbacks
            if isinstance(callback, dict)
        )

    return test


def variant_summary(runs: Sequence[dict[str, Any]], variant: Variant, metric: str, which: str = "last") -> dict:
    """A variant's runs (one per seed) in one row: each seed's ``which`` (last or best) ``metric`` in
    percent, their mean and their spread (max - min); NaN where no run matches."""
    runs = sorted(variant.runs(runs), key=lambda run: run["config"].get("seed_everything") or 0)
    values = [100 * run[f"{which} {metric}"] for run in runs]
    return {
        "variant": variant.label,
        "seeds": [run["config"].get("seed_everything") for run in runs],
        "values": values,
        "mean": statistics.fmean(values) if values else math.nan,
        "spread": max(values) - min(values) if len(values) > 1 else math.nan,
        "paper": variant.paper,
    }


def pretrained_from(fragment: str) -> Callable[[Any], bool]:
    """A test of ``model.pretrained``: the run started from a checkpoint whose path holds ``fragment``."""
    return lambda path: isinstance(path, str) and fragment in path


def _v2(**init_args: Any) -> dict[str, Any]:
    return {"model.net.class_path": "bisenet_pl.models.BiSeNetV2"} | {
        f"model.net.init_args.{name}": value for name, value in init_args.items()
    }


#: The study of sweeps/cpu_study.yaml as the papers tabulate it. Paper figures: Cityscapes val mIoU,
#: BiSeNetV2 Table 1 (from scratch, no booster unless said) and BiSeNetV1's ResNet-18 row (ImageNet-
#: pretrained, which ours is not), copied from the papers by hand.
BOOSTERS = ["stem", "stage3", "stage4", "stage5"]
CPU_STUDY = {
    "BiSeNetV2 components (no boosters)": [
        Variant("detail branch only", _v2(branches="detail", aux_heads=[]), 62.35),
        Variant("semantic branch only", _v2(branches="semantic", aux_heads=[]), 64.68),
        Variant("both branches, BGA", _v2(branches="both", aggregation="bga", aux_heads=[]), 69.67),
    ],
    "BiSeNetV2 aggregation (no boosters)": [
        Variant("sum", _v2(branches="both", aggregation="sum", aux_heads=[]), 68.60),
        Variant("concatenation", _v2(branches="both", aggregation="concat", aux_heads=[]), 68.93),
        Variant("BGA", _v2(branches="both", aggregation="bga", aux_heads=[]), 69.67),
    ],
    "BiSeNetV2 boosters (both branches, BGA)": [
        Variant("none", _v2(branches="both", aggregation="bga", aux_heads=[]), 69.67),
        Variant("all four", _v2(branches="both", aggregation="bga", aux_heads=BOOSTERS), 73.19),
    ],
    "BiSeNetV1 against BiSeNetV2": [
        Variant("BiSeNetV1, ResNet-18", {"model.net.class_path": "bisenet_pl.models.BiSeNetV1"}, 74.8),
        Variant("BiSeNetV2", _v2(branches="both", aggregation="bga", aux_heads=BOOSTERS), 73.4),
    ],
}

#: The whole study at 3000 steps (sweeps/cpu_study_3000.yaml): seeds of five of its seven variants agree within a
#: dev point there (at 1000 steps, up to 3.1); sum and concatenation do not at either budget.
CPU_STUDY_3000 = {f"3000 steps: {title}": variants for title, variants in CPU_STUDY.items()}

#: The recipe study's second round on the dev split (sweeps/recipe_*_3000.yaml), each change against the recipe
#: itself (cpu_study_3000's BiSeNetV2 runs: configs/camvid_cpu.yaml for 3000 steps). No paper has these rows.
RECIPE = CPU_STUDY["BiSeNetV1 against BiSeNetV2"][1].config | {
    "data.init_args.crop_size": [192, 256],
    "data.init_args.batch_size": 8,
    "trainer.callbacks": None,
}
RECIPE_STUDY_3000 = {
    "Recipe, second round: 3000 steps of configs/camvid_cpu.yaml, one change each": [
        Variant(
            "4 crops of 288x384 a step (was 8 of 192x256)",
            RECIPE | {"data.init_args.crop_size": [288, 384], "data.init_args.batch_size": 4},
        ),
        Variant(
            "EMA of the weights, decay 0.999",
            RECIPE | {"trainer.callbacks": has_callback("EMAWeightAveraging", decay=0.999)},
        ),
        Variant("the recipe", RECIPE),
    ]
}

#: The recipe's 3000-step runs continued for 600 steps (weights only: a new warm-up and poly schedule from lr 5e-4),
#: at full resolution against the recipe's own crops, which tell what the 600 more steps give by themselves.
FINISH = RECIPE | {"trainer.max_steps": 600, "model.optimizer.lr": 0.0005}
FULL_FINISH = FINISH | {"data.init_args.crop_size": [360, 480], "data.init_args.batch_size": 2}
FROM_RECIPE = {"model.pretrained": pretrained_from("net=BiSeNetV2_seed")}  # the recipe's 3000-step runs
RECIPE_FINISH = {
    "A finish of 600 steps after 3000, from each seed's last checkpoint": [
        Variant("at full resolution: 2 crops of 360x480 a step", FULL_FINISH | FROM_RECIPE),
        Variant("at the recipe's crops: 8 of 192x256 a step", FINISH),
        Variant(
            "at full resolution, after 3000 steps on 4 crops of 288x384 instead",
            FULL_FINISH | {"model.pretrained": pretrained_from("crop_size=288+384,batch_size=4_seed")},
        ),
        Variant("no finish: the recipe's 3000 steps", RECIPE | {"trainer.max_steps": 3000}),
    ]
}


def study_table(
    title: str,
    variants: Sequence[Variant],
    runs: Sequence[dict[str, Any]],
    val_runs: Sequence[dict[str, Any]],
    metric: str = "dev/mIoU",
    which: str = "last",
) -> tuple[str, list[dict]]:
    """One table of a study in Markdown (``**title**``, then a row per variant: each seed's ``metric``, their
    mean and spread, the mean's difference to the last row, the mean val mIoU, the paper's figure and its
    difference to the paper's last row), and its rows as :func:`variant_summary` gives them."""

    def cell(value: float | None) -> str:
        return "–" if value is None or value != value else f"{value:.2f}"

    rows = [variant_summary(runs, variant, metric, which) for variant in variants]
    val = [variant_summary(val_runs, variant, "val/mIoU", which) for variant in variants]
    last, paper_last = rows[-1]["mean"], rows[-1]["paper"]
    lines = [
        f"**{title}**",
        "",
        f"| variant | {metric} per seed | mean | spread | vs last row | val mean | paper | paper vs last row |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, val_row in zip(rows, val):
        seeds = ", ".join(f"{value:.2f} ({seed})" for value, seed in zip(row["values"], row["seeds"])) or "no run"
        paper_gap = row["paper"] - paper_last if row["paper"] is not None and paper_last is not None else None
        lines.append(
            f"| {row['variant']} | {seeds} | {cell(row['mean'])} | {cell(row['spread'])} | "
            f"{cell(row['mean'] - last)} | {cell(val_row['mean'])} | {cell(row['paper'])} | {cell(paper_gap)} |"
        )
    return "\n".join(lines), rows
