"""Plot validation mIoU against steps and minutes for CSV-logger runs, and print their table.

    python benchmarks/learning_curves.py --output docs/cpu_recipes.png \
        "SGD 0.05=outputs/a/lightning_logs/version_0" "AdamW 2e-3=outputs/b/lightning_logs/version_0"

``--metric dev/mIoU`` plots the dev split instead (runs with ``data.dev_files``/``dev_sequences``);
``--metric val/mIoU dev/mIoU`` (after the runs) plots both, one line style each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bisenet_pl.data.io import write_image
from bisenet_pl.results import metric_history
from bisenet_pl.visualize import figure_to_array, learning_curves_figure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR", help="a label and a folder holding metrics.csv")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="")
    parser.add_argument(
        "--metric",
        nargs="+",
        default=["val/mIoU"],
        help="the logged metrics to plot, e.g. dev/mIoU or val/mIoU dev/mIoU",
    )
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, folder = spec.partition("=")  # at the first "=": sweep run folders hold "=" (net=BiSeNetV2_seed1)
        if not sep or not (Path(folder) / "metrics.csv").is_file():
            parser.error(f"{spec!r}: expected LABEL=RUN_DIR with RUN_DIR/metrics.csv")
        if not any(metric_history(folder, metric)[1] for metric in args.metric):
            parser.error(f"{folder}/metrics.csv has none of {', '.join(args.metric)}")
        runs[label] = Path(folder)
    write_image(args.output, figure_to_array(learning_curves_figure(runs, args.metric, title=args.title)))
    print("| recipe | metric | steps | minutes | last | best (step) |\n|---|---|---|---|---|---|")
    for label, folder in runs.items():
        minutes = dict(zip(*metric_history(folder, "time/minutes")))
        for metric in args.metric:
            steps, values = metric_history(folder, metric)
            if not values:
                continue  # a run without this split (e.g. no dev split)
            best = max(range(len(values)), key=values.__getitem__)
            spent = f"{minutes[steps[-1]]:.1f}" if steps[-1] in minutes else "-"
            print(
                f"| {label} | {metric} | {steps[-1]} | {spent} | {100 * values[-1]:.2f} | {100 * values[best]:.2f} "
                f"({steps[best]}) |"
            )
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
