"""The rows of the speed benchmark's tables: sizes as written on its command line, the machine they were
measured on, rows as Markdown, and which variant to pick from a run's rows."""

from __future__ import annotations

import argparse

import torch

from bisenet_pl.measure import cpu_description


def parse_size(text: str) -> tuple[int, int]:
    """``"512x1024"`` as (height, width); anything else is an argparse error naming the text."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: expected HEIGHTxWIDTH, e.g. 512x1024") from None
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be at least 32 (the networks' stride)")
    return height, width


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{cpu_description()}, {torch.get_num_threads()} threads (torch {torch.__version__}, CPU)"


def which_to_pick(rows: list[dict]) -> list[str]:
    """For each network and size of the inference rows of this run: the fastest variant whose results
    match PyTorch's, and the fastest within 1.0 mIoU of fp32 (when scored; else the fastest, unscored)."""
    lines = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        if row["kind"] == "inference":
            groups.setdefault((row["network"], row["size"]), []).append(row)
    for (network, size), group in groups.items():
        exact = [row for row in group if row.get("exact")]
        scored = [row for row in group if "within_1_miou" in row]
        accurate = [row for row in scored if row["within_1_miou"]] if scored else group
        picks = []
        if exact:
            best = min(exact, key=lambda row: row["ms_per_batch"])
            picks.append(f"exact: {best['variant']} ({best['ms_per_batch']:.0f} ms, {best['x_reference']:.2f}x)")
        if accurate:
            best = min(accurate, key=lambda row: row["ms_per_batch"])
            what = "within 1.0 mIoU of fp32" if scored else "fastest (not scored: give --checkpoint and --data-root)"
            miou = f", mIoU {best['miou']:.2f}" if "miou" in best else ""
            picks.append(f"{what}: {best['variant']} ({best['ms_per_batch']:.0f} ms, {best['x_reference']:.2f}x{miou})")
        lines.append(f"- {network} {size}: " + "; ".join(picks))
    return lines


def format_row(row: dict, keys: list[str] | None = None) -> str:
    """The row's cells (``keys``' cells, ``-`` where the row has none)."""

    def cell(key: str) -> str:
        value = row.get(key, "-")
        if key in ("max_abs_diff", "logit_scale") and isinstance(value, float):
            return f"{value:.1e}"
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    return " | ".join(cell(key) for key in (keys or list(row)))


def markdown(rows: list[dict]) -> str:
    header = list(dict.fromkeys(key for row in rows for key in row))  # every row's keys, in first-seen order
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] if rows else []
    return "\n".join(lines + ["| " + format_row(row, header) + " |" for row in rows])
