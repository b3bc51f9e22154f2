"""Collect training runs into ablation tables: from local logger folders, or from the W&B API."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
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
    """``{"model": {"lr": 0.05}}`` -> ``{"model.lr": 0.05}``; lists stay values."""
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
    varying = []
    for key in keys:
        if key.startswith(tuple(ignore)):
            continue
        values = {repr(run["config"].get(key)) for run in runs}
        if len(values) > 1:
            varying.append(key)
    return varying


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
