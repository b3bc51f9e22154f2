"""Draws the README's three plots of the runs in this folder (run from the repository root):
docs/recipe_finish_augmentation_dev.png (the changed 600-step finishes), docs/recipe_frames_dev.png (whole
frames from the first step against the recipe's crops, then the finish), docs/recipe_weight_decay_dev.png
(five times the weight decay through the crops and the finish) and docs/recipe_narrower_scales_dev.png (v3's
finish against the narrower scales, paired by seed)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bisenet_pl.results import metric_history

RUNS = Path(__file__).parent
# (run name, label, colour): a finish's colour stays the same as rows are added
FINISHES = [("full", "v3's finish", "C0"), ("scales0.5-2", "scales 0.5-2", "C2"), ("photometric", "photometric", "C4"),
            ("ohem", "OHEM", "C6"), ("lr1e-3", "lr 1e-3", "C8"), ("lr2.5e-4", "lr 2.5e-4", "C3"),
            ("mfweights", "full class weights", "C1"), ("scales0.875-1.25", "scales 0.875-1.25", "C5")]  # fmt: skip


def dev_curve(run: str, steps_before: int = 0, minutes_before: float = 0.0) -> tuple[list, list, list]:
    """Steps, minutes and dev mIoU (%) at each validation of a run, shifted to start where another ended."""
    steps, miou = metric_history(RUNS / run, "dev/mIoU")
    _, minutes = metric_history(RUNS / run, "time/minutes")  # logged with each validation
    return (
        [step + 1 + steps_before for step in steps],  # metrics.csv counts steps from 0
        [m + minutes_before for m in minutes],
        [100 * value for value in miou],
    )


def figure(title: str):
    fig, (by_step, by_minute) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    by_step.set_xlabel("training step")
    by_minute.set_xlabel("minutes of training (validation included)")
    by_step.set_ylabel("dev/mIoU (%)")
    for ax in (by_step, by_minute):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig, by_step, by_minute


def draw(axes, curve, style: str, color: str, label: str) -> None:
    by_step, by_minute = axes
    steps, minutes, miou = curve
    by_step.plot(steps, miou, style, ms=3, color=color, label=label)
    by_minute.plot(minutes, miou, style, ms=3, color=color)


def save(fig, by_step, path: str, ncol: int) -> None:
    by_step.legend(fontsize=7, loc="lower right", ncol=ncol)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def augmentation_plot(path: str = "docs/recipe_finish_augmentation_dev.png") -> None:
    fig, *axes = figure("dev mIoU, the 600-step finish changed (from the same 3000-step run; Zen 4)")
    for run, label, color in FINISHES:
        for seed, style in (("42", "o-"), ("1", "s--")):
            draw(axes, dev_curve(f"{run}_seed{seed}"), style, color, f"{label}, seed {seed}")
    save(fig, axes[0], path, ncol=2)


def crops_then_finish(base: str, finish: str) -> tuple[list, list, list]:
    """A 3000-step run's dev curve followed by its finish's, on one axis of steps and minutes."""
    before = dev_curve(base)
    after = dev_curve(finish, before[0][-1], before[1][-1])
    return tuple(b + a for b, a in zip(before, after))


def recipe_curves(axes, label: str) -> None:
    """The recipe's 3000 steps (seed 42), then v3's finish with seeds 42 and 1."""
    for seed, color in (("42", "C0"), ("1", "C1")):
        draw(axes, crops_then_finish("base3000_seed42", f"full_seed{seed}"), "o-", color, label.format(seed=seed))


def frames_plot(path: str = "docs/recipe_frames_dev.png") -> None:
    fig, *axes = figure("dev mIoU, whole frames from the first step against crops then the finish (Zen 4)")
    recipe_curves(axes, "3000 steps of 8 x 192x256, then the finish (its seed {seed})")
    for seed, color in (("42", "C2"), ("1", "C3")):
        draw(axes, dev_curve(f"frames3600_seed{seed}"), "s-", color, f"3600 steps of 2 x 360x480, seed {seed}")
    save(fig, axes[0], path, ncol=1)


def weight_decay_plot(path: str = "docs/recipe_weight_decay_dev.png") -> None:
    fig, *axes = figure("dev mIoU, weight decay 0.05 (the recipe's 0.01) in the crops and the finish (Zen 4)")
    recipe_curves(axes, "the recipe (seed 42), then the finish (its seed {seed})")
    for seed, color in (("42", "C2"), ("1", "C3")):
        curve = crops_then_finish(f"wd0.05_base_seed{seed}", f"wd0.05_seed{seed}")
        draw(axes, curve, "s-", color, f"weight decay 0.05, seed {seed} (both phases)")
    save(fig, axes[0], path, ncol=1)


def last_value(run: str, metric: str) -> float:
    """The run's last logged value of a metric, in percent."""
    return 100 * metric_history(RUNS / run, metric)[1][-1]


def narrower_scales_plot(
    path: str = "docs/recipe_narrower_scales_dev.png", seeds: tuple[str, ...] = ("42", "1", "2", "3", "4")
) -> None:
    """Each seed's dev and val mIoU after v3's finish and after the narrower-scales one, from the same checkpoint."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, metric in zip(axes, ("dev/mIoU", "val/mIoU")):
        pairs = [[last_value(f"{run}_seed{seed}", metric) for run in ("full", "scales0.875-1.25")] for seed in seeds]
        for index, (seed, pair) in enumerate(zip(seeds, pairs)):
            ax.plot([0, 1], pair, "o-", color=f"C{index}", ms=4, alpha=0.7, label=f"seed {seed}")
        means = [sum(column) / len(pairs) for column in zip(*pairs)]
        ax.plot([0, 1], means, "D-", color="k", ms=6, label=f"mean of {len(pairs)} seeds")
        ax.set_xticks([0, 1], ["v3's finish (scales 0.75-1.5)", "narrower scales (0.875-1.25)"])
        ax.set_xlim(-0.25, 1.25)
        ax.set_ylabel(f"{metric} (%) after the 600-step finish")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=8, loc="center right")
    fig.suptitle("the finish's scales, paired by seed (from the same 3000-step run; Zen 4)")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    augmentation_plot()
    frames_plot()
    weight_decay_plot()
    narrower_scales_plot()
