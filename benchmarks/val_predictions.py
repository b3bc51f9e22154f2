"""A picture of predictions on a few images of a split (image | ground truth | prediction | errors),
with the class colours, for a model card or the README.

    python benchmarks/val_predictions.py --weights bisenetv2_camvid --data-root ../shared/camvid \
        --output weights/bisenetv2_camvid_val.png --images 7 38 64 93

``--split dev --dev-sequences 0006R0`` draws a held-out sequence instead: the images to show for a
model that trained on val.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bisenet_pl.data import CamVidDataModule
from bisenet_pl.data.io import write_image
from bisenet_pl.evaluation import class_scores
from bisenet_pl.module import SegmentationModule
from bisenet_pl.visualize import denormalize, figure_to_array, sample_panel


def predictions_figure(
    model: SegmentationModule, datamodule: CamVidDataModule, indices: list[int], title: str = "", split: str = "val"
):
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    val = datamodule.dataset(split)
    figure = Figure(figsize=(16, 3.1 * len(indices) + 0.8), dpi=80, layout="constrained")
    axes = figure.subplots(len(indices), 1, squeeze=False)[:, 0]
    for ax, index in zip(axes, indices):
        item = val[index]
        with torch.no_grad():
            prediction = class_scores(model.net, item["image"][None], model.evaluation)[0].argmax(0).byte().numpy()
        image = denormalize(item["image"], datamodule.mean, datamodule.std)
        ax.imshow(sample_panel(image, item["mask"].numpy(), prediction, datamodule.palette, model.ignore_index))
        ax.set_title(
            f"{Path(item['path']).name}: image | ground truth | prediction | errors (red wrong, white void)",
            fontsize=10,
        )
        ax.axis("off")
    handles = [
        Patch(color=[c / 255 for c in colour], label=name)
        for name, colour in zip(model.class_names, datamodule.palette)
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=10, frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--weights", default="bisenetv2_camvid", help="released weights, a weights file or a checkpoint"
    )
    parser.add_argument("--data-root", type=Path, required=True, help="CamVid")
    parser.add_argument("--split", default="val", choices=["val", "test", "dev"], help="the split drawn")
    parser.add_argument("--dev-sequences", nargs="+", default=[], help="the sequences of the dev split (--split dev)")
    parser.add_argument("--images", type=int, nargs="+", default=[7, 38, 64, 93], help="image indices in the split")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    model = SegmentationModule.from_pretrained(args.weights)
    if (args.split == "dev") != bool(args.dev_sequences):
        parser.error("--split dev and --dev-sequences go together")
    datamodule = CamVidDataModule(root=str(args.data_root), dev_sequences=args.dev_sequences or None)
    figure = predictions_figure(model, datamodule, args.images, args.title, args.split)
    write_image(args.output, figure_to_array(figure))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
