"""Writing ``bisenet-pl predict`` results: label PNGs, colour masks, overlays, probabilities,
videos, and the Cityscapes benchmark's submission format."""

from __future__ import annotations

import os
import re
from io import BytesIO
from pathlib import Path
from typing import Literal, get_args

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from bisenet_pl.data.io import write_image
from bisenet_pl.errors import ConfigError, DataError
from bisenet_pl.evaluation import probabilities as class_probabilities
from bisenet_pl.files import atomic_write
from bisenet_pl.visualize import colorize, denormalize, overlay, palette_for

Output = Literal["labels", "colour", "overlay", "probabilities"]
#: A Cityscapes image id in a file name: city_sequence_frame.
CITYSCAPES_ID = re.compile(r"([a-z]+(?:_[a-z]+)*)_(\d{6})_(\d{6})")


def write_array(path: Path, array: np.ndarray) -> None:
    buffer = BytesIO()
    np.save(buffer, array)
    with atomic_write(path) as partial:
        partial.write_bytes(buffer.getvalue())


def cityscapes_label_ids() -> np.ndarray:
    """A 256-entry lookup table from the 19 train ids to Cityscapes labelIds (the benchmark's)."""
    from cityscapesscripts.helpers.labels import trainId2label

    table = np.zeros(256, dtype=np.uint8)
    for train_id in range(19):
        table[train_id] = trainId2label[train_id].id
    return table


class SegmentationWriter(BasePredictionWriter):
    """Writes each prediction as it comes (nothing is kept in memory).

    For images, under ``output_dir``: ``labels/NAME.png`` (class ids), ``colour/NAME.png``,
    ``overlay/NAME.jpg``, ``probabilities/NAME.npy`` (float16, C x H x W), where NAME is the
    image's path relative to the input folder. For a video: ``VIDEO_colour.mp4`` and
    ``VIDEO_overlay.mp4`` at the video's frame rate, and per-frame labels/probabilities under
    ``labels/VIDEO/`` and ``probabilities/VIDEO/``.

    Args:
        output_dir: where to write; default ``predictions`` under ``trainer.default_root_dir``.
        outputs: which of ``labels``, ``colour``, ``overlay``, ``probabilities`` to write.
        overlay_alpha: weight of the colour mask in overlays.
        cityscapes_submission: also write ``cityscapes_submission/CITY/CITY_SEQ_FRAME.png`` with
            labelIds, the format of the Cityscapes test server (zip that folder and upload it).
    """

    def __init__(
        self,
        output_dir: str | None = None,
        outputs: list[Output] | None = None,
        overlay_alpha: float = 0.5,
        cityscapes_submission: bool = False,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir else None
        self.outputs = list(outputs) if outputs is not None else ["labels", "colour", "overlay"]
        unknown = set(self.outputs) - set(get_args(Output))
        if unknown:
            raise ConfigError(
                f"prediction_writer.outputs: unknown {sorted(unknown)}; choose from {', '.join(get_args(Output))}"
            )
        self.overlay_alpha = overlay_alpha
        self.cityscapes_submission = cityscapes_submission
        # (video, kind) -> the open writer, the file it writes, the final name it gets when complete
        self._videos: dict[tuple[str, str], tuple[cv2.VideoWriter, Path, Path]] = {}
        self.written = 0
        self.skipped: list[str] = []  # why each unreadable image was skipped

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir) / "predictions"
        if self.cityscapes_submission and pl_module.num_classes != 19:
            raise ConfigError(
                "prediction_writer.cityscapes_submission needs the 19 Cityscapes classes; the model has "
                f"{pl_module.num_classes}"
            )
        datamodule = trainer.datamodule
        self.palette = palette_for(datamodule, pl_module.num_classes)
        self.mean, self.std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
        source = getattr(datamodule, "predict_source", None) or getattr(datamodule, "root", None)
        self.source = Path(source) if source is not None else None
        self._label_ids = cityscapes_label_ids() if self.cityscapes_submission else None

    def _name(self, path: Path) -> Path:
        """The image's path relative to the input folder, without suffix (unique, readable)."""
        if self.source is not None and self.source.is_dir():
            try:
                return path.relative_to(self.source).with_suffix("")
            except ValueError:
                pass
        return Path(path.stem)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        labels = prediction["prediction"].to(torch.uint8).cpu().numpy()
        probabilities = None
        if "probabilities" in self.outputs:
            probabilities = class_probabilities(prediction["scores"], pl_module.evaluation)
        needs_image = "overlay" in self.outputs
        for index, path in enumerate(prediction["path"]):
            error = prediction.get("error", [""] * len(prediction["path"]))[index]
            if error:
                rank_zero_warn(f"skipped {error}")
                self.skipped.append(error)
                continue
            image = denormalize(batch["image"][index], self.mean, self.std) if needs_image else None
            probs = probabilities[index].to(torch.float16).cpu().numpy() if probabilities is not None else None
            if "frame" in prediction:
                self._write_frame(
                    Path(path),
                    int(prediction["frame"][index]),
                    float(prediction["fps"][index]),
                    labels[index],
                    image,
                    probs,
                )
            else:
                self._write_image(Path(path), labels[index], image, probs)
            self.written += 1

    def _write_image(self, path: Path, label: np.ndarray, image: np.ndarray | None, probs: np.ndarray | None) -> None:
        name = self._name(path)
        out = self.output_dir
        if "labels" in self.outputs:
            write_image(out / "labels" / f"{name}.png", label)
        if "colour" in self.outputs:
            write_image(out / "colour" / f"{name}.png", colorize(label, self.palette))
        if "overlay" in self.outputs:
            write_image(
                out / "overlay" / f"{name}.jpg", overlay(image, colorize(label, self.palette), self.overlay_alpha)
            )
        if probs is not None:
            write_array(out / "probabilities" / f"{name}.npy", probs)
        if self._label_ids is not None:
            match = CITYSCAPES_ID.search(path.name)
            if match is None:
                raise ConfigError(
                    f"prediction_writer.cityscapes_submission: {path.name} is not named like a Cityscapes image "
                    f"(city_000000_000000_...)"
                )
            city = match.group(1)
            write_image(out / "cityscapes_submission" / city / f"{match.group(0)}.png", self._label_ids[label])

    def _write_frame(
        self, video: Path, frame: int, fps: float, label: np.ndarray, image: np.ndarray | None, probs: np.ndarray | None
    ) -> None:
        out = self.output_dir
        if "labels" in self.outputs:
            write_image(out / "labels" / video.stem / f"frame_{frame:06d}.png", label)
        if probs is not None:
            write_array(out / "probabilities" / video.stem / f"frame_{frame:06d}.npy", probs)
        colours = colorize(label, self.palette)
        if "colour" in self.outputs:
            self._video_writer(video, "colour", fps, colours.shape).write(cv2.cvtColor(colours, cv2.COLOR_RGB2BGR))
        if "overlay" in self.outputs:
            blended = overlay(image, colours, self.overlay_alpha)
            self._video_writer(video, "overlay", fps, blended.shape).write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))

    def _video_writer(self, video: Path, kind: str, fps: float, shape: tuple[int, ...]) -> cv2.VideoWriter:
        key = (str(video), kind)
        if key not in self._videos:
            final = self.output_dir / f"{video.stem}_{kind}.mp4"
            partial = final.with_name(final.stem + ".part.mp4")  # OpenCV picks the container by suffix
            partial.parent.mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (shape[1], shape[0]))
            if not writer.isOpened():
                raise OSError(f"cannot write video {partial}")
            self._videos[key] = (writer, partial, final)
        return self._videos[key][0]

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for writer, partial, final in self._videos.values():
            writer.release()
            os.replace(partial, final)
        self._videos.clear()
        if trainer.is_global_zero:
            print(f"Wrote predictions for {self.written} images or frames to {self.output_dir}", flush=True)
        if self.skipped:  # the run goes on past unreadable images, and then fails, naming them
            skipped, self.skipped = self.skipped, []
            raise DataError(
                f"{len(skipped)} image(s) could not be read and were skipped (the {self.written} others were "
                f"written): {'; '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}"
            )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        for writer, partial, _ in self._videos.values():  # no half-written videos left behind
            writer.release()
            partial.unlink(missing_ok=True)
        self._videos.clear()
