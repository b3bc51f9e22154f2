"""``bisenet-pl demo``: a Gradio page on 127.0.0.1 that segments an uploaded image (or a short
video) with a weights file or checkpoint of this project, in PyTorch or in an exported OpenVINO or
ONNX Runtime file, and shows the overlay, the colour mask with a legend, each class's share of the
pixels and the time the network took.

The labels are those ``bisenet-pl predict`` writes for the same image (the same reading,
normalisation and ``predict_step``); bad uploads are a message on the page, never a traceback.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from bisenet_pl.data.io import read_image, write_image
from bisenet_pl.data.predict import header_size, is_video
from bisenet_pl.data.transforms import eval_transform, to_tensors
from bisenet_pl.errors import ConfigError, DataError
from bisenet_pl.module import SegmentationModule
from bisenet_pl.visualize import colorize, overlay

DEMO_EXTRA = "pip install 'bisenet-pl[demo]' (gradio)"
#: The largest image the page segments (width x height): bigger ones take minutes on a CPU.
MAX_PIXELS = 4096 * 4096
#: What the page does with a video: its first seconds, every frame.
VIDEO_SECONDS = 5.0
EXAMPLES = Path(__file__).parent / "demo_examples"
RUNTIMES = {"PyTorch": None, "OpenVINO": "openvino", "ONNX Runtime": "onnx"}


@dataclass
class Segmentation:
    """What the page shows for one image."""

    labels: np.ndarray  # HxW class ids
    overlay: np.ndarray  # HxWx3 RGB
    colours: np.ndarray  # HxWx3 RGB
    shares: dict[str, float]  # class name -> share of the pixels
    milliseconds: float
    notes: list[str] = field(default_factory=list)


class DemoModel:
    """A network with its classes, colours and normalisation, runnable in PyTorch or, exported on
    first use into a temporary folder, in OpenVINO or ONNX Runtime (fp32)."""

    def __init__(self, module: SegmentationModule, mean, std, palette) -> None:
        self.module = module.eval()
        self.mean, self.std, self.palette = list(mean), list(std), [list(c) for c in palette]
        self.class_names = list(module.class_names)
        self.transform = eval_transform(self.mean, self.std)
        self._scratch = tempfile.TemporaryDirectory(prefix="bisenet-pl-demo-")
        self._predictors: dict[str, object] = {}

    @classmethod
    def load(cls, source: str | Path, config: str | Path | None = None) -> DemoModel:
        """From released weights, a weights file, a Hub folder or repository, or a checkpoint of
        ``bisenet-pl fit`` (whose normalisation and colours come from ``config``, by default the
        config.yaml fit saved beside it)."""
        from bisenet_pl.data.config import datamodule_from_config

        module = SegmentationModule.from_pretrained(source)
        info = module.weights_info
        if info.mean is None:
            saved = Path(source).parent.parent / "config.yaml"
            config = config or (saved if saved.is_file() else None)
            if config is None:
                raise ConfigError(
                    f"{source} does not hold its data's normalisation: give --config (the training config)"
                )
            datamodule = datamodule_from_config(config)
            return cls(module, datamodule.mean, datamodule.std, datamodule.palette)
        return cls(module, info.mean, info.std, info.palette)

    @property
    def runtimes(self) -> list[str]:
        """PyTorch, and the exported runtimes installed here."""
        from importlib.util import find_spec

        found = {"OpenVINO": find_spec("openvino"), "ONNX Runtime": find_spec("onnxruntime")}
        return ["PyTorch", *(name for name, spec in found.items() if spec is not None)]

    def _predictor(self, runtime: str):
        if runtime not in self._predictors:
            from bisenet_pl.deploy import ExportOptions, export, load_predictor

            suffix = ".xml" if runtime == "OpenVINO" else ".onnx"
            path = Path(self._scratch.name) / f"network{suffix}"
            options = ExportOptions(labels="int64", mean=self.mean, std=self.std, example_size=(360, 480))
            export(self.module.net, path, "openvino" if runtime == "OpenVINO" else "onnx", options=options)
            self._predictors[runtime] = load_predictor(path, precision="fp32" if runtime == "OpenVINO" else None)
        return self._predictors[runtime]

    def labels(self, image: np.ndarray, runtime: str = "PyTorch") -> tuple[np.ndarray, float]:
        """Class ids (HxW uint8) of an RGB uint8 image, and the network's milliseconds."""
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
        tensor, _ = to_tensors(self.transform(image=image)["image"], None)
        if runtime == "PyTorch":
            start = time.perf_counter()
            with torch.inference_mode():
                labels = self.module.predict_step({"image": tensor[None]}, 0)["prediction"][0].numpy()
            return labels.astype(np.uint8), 1000 * (time.perf_counter() - start)
        if runtime not in self.runtimes:
            raise ConfigError(f"the {runtime} runtime is not installed here: pip install 'bisenet-pl[deploy]'")
        predictor = self._predictor(runtime)
        start = time.perf_counter()
        labels = np.asarray(predictor(tensor[None].numpy()))[0]
        return labels.astype(np.uint8), 1000 * (time.perf_counter() - start)

    def segment(self, image: np.ndarray, runtime: str = "PyTorch") -> Segmentation:
        labels, milliseconds = self.labels(image, runtime)
        colours = colorize(labels, self.palette)
        counts = np.bincount(labels.ravel(), minlength=len(self.class_names))[: len(self.class_names)]
        shares = {name: float(count) / labels.size for name, count in zip(self.class_names, counts)}
        return Segmentation(labels, overlay(image, colours), colours, shares, milliseconds)

    def legend_html(self) -> str:
        swatches = "".join(
            f'<span style="display:inline-block;margin:2px 10px 2px 0"><span style="display:inline-block;'
            f'width:14px;height:14px;vertical-align:middle;background:rgb({r},{g},{b});border:1px solid #888">'
            f"</span> {name}</span>"
            for name, (r, g, b) in zip(self.class_names, self.palette)
        )
        return f'<div id="legend">{swatches}</div>'

    def scratch_folder(self) -> Path:
        """A new folder for one answer's files, removed with the rest by :meth:`close`."""
        return Path(tempfile.mkdtemp(dir=self._scratch.name))

    def close(self) -> None:
        self._scratch.cleanup()


def read_upload(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """An uploaded file as RGB uint8, with notes on what was changed; a :class:`DataError` in
    words for anything the page cannot segment."""
    path = Path(path)
    size = header_size(path)
    name = path.name
    if size is None:
        raise DataError(f"{name} is not an image this page reads (PNG, JPEG, BMP, TIFF or WebP)")
    if size[0] * size[1] > MAX_PIXELS:
        raise DataError(
            f"{name} is {size[0]}x{size[1]} pixels; the page segments images of up to {MAX_PIXELS // 2**20} "
            "megapixels: scale it down first"
        )
    with Image.open(path) as opened:  # the header only: what read_image converts away
        mode, transparent = opened.mode, "transparency" in opened.info
    image = read_image(path)
    notes = []
    if mode in ("L", "LA", "I;16", "1"):
        notes.append("a grayscale image: the network was trained on colour images, so expect worse results")
    if mode in ("RGBA", "LA", "PA") or transparent:
        notes.append("its transparency was dropped")
    return image, notes


def segment_video(model: DemoModel, path: str | Path, runtime: str, output: Path) -> tuple[int, float]:
    """The overlay of a video's first :data:`VIDEO_SECONDS` seconds, written to ``output`` (WebM);
    the frame count and the network's mean milliseconds a frame."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(f"{Path(path).name} is not a video this page reads")
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    writer, frames, total = None, 0, 0.0
    try:
        while frames < int(VIDEO_SECONDS * fps):
            ok, frame = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            labels, milliseconds = model.labels(rgb, runtime)
            blended = overlay(rgb, colorize(labels, model.palette))
            if writer is None:
                writer = cv2.VideoWriter(
                    str(output), cv2.VideoWriter_fourcc(*"VP80"), fps, (blended.shape[1], blended.shape[0])
                )
            writer.write(cv2.cvtColor(blended, cv2.COLOR_RGB2BGR))
            frames, total = frames + 1, total + milliseconds
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise DataError(f"{Path(path).name} has no frame this page can read")
    return frames, total / frames


def build_app(model: DemoModel):
    """The Gradio Blocks of the page (``segment`` and ``segment_video`` are its API endpoints)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio as gr
    except ImportError:
        raise ConfigError(f"bisenet-pl demo needs {DEMO_EXTRA}") from None

    def on_image(path: str | None, runtime: str):
        if not path:
            raise gr.Error("Upload an image first (or pick an example).")
        try:
            image, notes = read_upload(path)
            result = model.segment(image, runtime)
        except (DataError, ConfigError) as error:
            raise gr.Error(str(error)) from None
        labels_path = model.scratch_folder() / f"{Path(path).stem}_labels.png"
        write_image(labels_path, result.labels)
        height, width = result.labels.shape
        message = f"**{runtime}**: {result.milliseconds:.0f} ms for the network on {width}x{height} pixels."
        if notes:
            message += " Note: " + "; ".join(notes) + "."
        return result.overlay, result.colours, result.shares, str(labels_path), message

    def on_video(path: str | None, runtime: str):
        if not path:
            raise gr.Error("Upload a video first.")
        output = model.scratch_folder() / f"{Path(path).stem}_overlay.webm"
        try:
            if not is_video(path):
                raise DataError(f"{Path(path).name} is not a video this page reads (mp4, avi, mov, mkv, webm)")
            frames, milliseconds = segment_video(model, path, runtime, output)
        except (DataError, ConfigError) as error:
            raise gr.Error(str(error)) from None
        return str(output), f"**{runtime}**: {frames} frames, {milliseconds:.0f} ms a frame for the network."

    network = type(model.module.net).__name__
    examples = sorted(str(p) for p in EXAMPLES.glob("*.jpg")) if EXAMPLES.is_dir() else []
    with gr.Blocks(title=f"bisenet-pl: {network}") as app:
        gr.Markdown(
            f"# {network}: semantic segmentation\n{len(model.class_names)} classes. Upload an image or pick an "
            "example; the network runs on this machine's CPU."
        )
        runtime = gr.Radio(model.runtimes, value="PyTorch", label="runtime")
        with gr.Tab("Image"):
            with gr.Row():
                # A file, not gr.Image: Gradio would decode an image itself and fail on a bad one in its own
                # words; here every upload reaches read_upload.
                image = gr.File(label="image (PNG, JPEG, BMP, TIFF or WebP)", type="filepath", elem_id="upload")
                shown = gr.Image(label="overlay", elem_id="overlay", format="png")
            button = gr.Button("Segment", variant="primary", elem_id="segment")
            timing = gr.Markdown(elem_id="timing")
            with gr.Row():
                colours = gr.Image(label="colour mask", format="png")
                shares = gr.Label(label="share of the pixels", num_top_classes=len(model.class_names))
            gr.HTML(model.legend_html())
            labels = gr.File(label="class ids (PNG, one value per pixel)")
            if examples:
                gr.Examples(examples, inputs=image, label="examples (CamVid frames)")
            button.click(on_image, [image, runtime], [shown, colours, shares, labels, timing], api_name="segment")
        with gr.Tab("Video"):
            video = gr.Video(label=f"video (its first {VIDEO_SECONDS:g} seconds are segmented)")
            video_button = gr.Button("Segment the video")
            video_out = gr.Video(label="overlay")
            video_timing = gr.Markdown()
            video_button.click(on_video, [video, runtime], [video_out, video_timing], api_name="segment_video")
    return app
