"""Pictures of segmentations: colour masks, overlays, error maps and confusion-matrix figures.

Shared by the logging callback, ``bisenet-pl predict`` and the notebooks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

#: Colour of ignored pixels in colour masks.
IGNORE_COLOUR = (0, 0, 0)
#: Error-map colours: correct, wrong, ignored.
CORRECT_COLOUR, WRONG_COLOUR, IGNORED_COLOUR = (40, 40, 40), (230, 30, 30), (255, 255, 255)


def palette_for(datamodule, num_classes: int) -> list[tuple[int, int, int]]:
    """The DataModule's class colours, or distinct default ones when it has none."""
    palette = getattr(datamodule, "palette", None)
    return default_palette(num_classes) if palette is None else palette


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for any number of classes (the PASCAL VOC bit-interleaving scheme)."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette.append((r, g, b))
    return palette


def palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """A 256x3 uint8 lookup table: the palette's colours, then :data:`IGNORE_COLOUR`."""
    table = np.tile(np.array(IGNORE_COLOUR, dtype=np.uint8), (256, 1))
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """HxW class ids -> HxWx3 RGB; ids outside the palette (e.g. ignore 255) are black."""
    return palette_array(palette)[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an RGB colour mask onto an RGB image (both HxWx3 uint8)."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return blended.round().clip(0, 255).astype(np.uint8)


def error_map(prediction: np.ndarray, target: np.ndarray, ignore_index: int) -> np.ndarray:
    """HxWx3 RGB: wrong pixels red, correct ones dark grey, ignored ones white."""
    out = np.empty((*target.shape, 3), dtype=np.uint8)
    out[:] = CORRECT_COLOUR
    out[prediction != target] = WRONG_COLOUR
    out[target == ignore_index] = IGNORED_COLOUR
    return out


def denormalize(image: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> np.ndarray:
    """A normalised CxHxW tensor back to HxWx3 uint8 RGB (min-max scaled without mean/std)."""
    image = image.detach().float().cpu()
    if mean is not None and std is not None:
        image = image * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)
    return (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def sample_panel(
    image: np.ndarray, target: np.ndarray, prediction: np.ndarray, palette, ignore_index: int
) -> np.ndarray:
    """Image | ground truth overlay | prediction overlay | error map, side by side."""
    return np.concatenate(
        [
            image,
            overlay(image, colorize(target, palette)),
            overlay(image, colorize(prediction, palette)),
            error_map(prediction, target, ignore_index),
        ],
        axis=1,
    )


def confusion_matrix_figure(
    matrix: torch.Tensor | np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix"
):
    """A matplotlib figure of a row-normalised confusion matrix (rows: ground truth)."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    counts = np.asarray(matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure = Figure(figsize=(size, size), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=90)
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("prediction")
    axes.set_ylabel("ground truth")
    axes.set_title(title)
    if len(class_names) <= 20:
        for (row, col), value in np.ndenumerate(normalised):
            axes.text(
                col,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > 0.5 else "black",
            )
    figure.colorbar(image, ax=axes, shrink=0.8)
    return figure


def figure_to_array(figure) -> np.ndarray:
    """Render a matplotlib figure to an HxWx3 uint8 RGB array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def learning_curves_figure(runs: dict[str, str | Path], metric: str | Sequence[str] = "val/mIoU", title: str = ""):
    """Validation metrics (in %) of CSV-logger runs against steps and against wall-clock minutes of
    training (``time/minutes``, logged by the CLI's TrainingTime callback). Several metrics (e.g.
    ``val/mIoU`` and ``dev/mIoU``) draw one line style each, a run keeping its colour."""
    from matplotlib.figure import Figure

    from bisenet_pl.results import metric_history

    metrics = [metric] if isinstance(metric, str) else list(metric)
    figure = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    by_step, by_time = figure.subplots(1, 2, sharey=True)
    for index, (label, run_dir) in enumerate(runs.items()):
        minutes = dict(zip(*metric_history(run_dir, "time/minutes")))
        for name, style in zip(metrics, ("-", "--", ":", "-.")):
            steps, values = metric_history(run_dir, name)
            if not steps:
                continue
            shown = label if len(metrics) == 1 else f"{label}: {name}"
            colour = f"C{index % 10}"
            by_step.plot(steps, [100 * v for v in values], style, marker="o", markersize=3, label=shown, color=colour)
            timed = [(minutes[step], 100 * value) for step, value in zip(steps, values) if step in minutes]
            if timed:
                by_time.plot(*zip(*timed), style, marker="o", markersize=3, label=shown, color=colour)
    by_step.set_xlabel("training step")
    by_time.set_xlabel("minutes of training (validation included)")
    by_step.set_ylabel(f"{', '.join(metrics)} (%)")
    for axes in (by_step, by_time):
        axes.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return figure
