"""The range of every DataModule option, checked when a DataModule is built."""

from __future__ import annotations

from collections.abc import Callable

from bisenet_pl.errors import check_options

#: The range of each option of every DataModule: (in words, test).
OPTION_RANGES: dict[str, tuple[str, Callable[[object], bool]]] = {
    "crop_size": ("[height, width], each >= 32", lambda v: len(v) == 2 and min(v) >= 32),
    "scale_range": ("[low, high] with 0 < low <= high", lambda v: len(v) == 2 and 0 < v[0] <= v[1]),
    "ignore_index": ("in 0..255 (masks are 8-bit)", lambda v: 0 <= v <= 255),
    "batch_size": (
        ">= 2 for training: BiSeNet's BatchNorm on pooled 1x1 context maps needs at least 2 images per step",
        lambda v: v >= 2,
    ),
    "num_workers": (">= 0", lambda v: v >= 0),
    "val_batch_size": (">= 1", lambda v: v >= 1),
    "mean": ("3 numbers (RGB)", lambda v: len(v) == 3),
    "std": ("3 numbers (RGB), each > 0", lambda v: len(v) == 3 and min(v) > 0),
    "hflip": ("a probability in [0, 1]", lambda v: 0 <= v <= 1),
    "color_jitter": ("in [0, 1]", lambda v: 0 <= v <= 1),
    "blur": ("a probability in [0, 1]", lambda v: 0 <= v <= 1),
    "noise": ("a share of the pixel range in [0, 1]", lambda v: 0 <= v <= 1),
    "train_splits": (
        "a list of distinct splits that includes train, e.g. [train, val]",
        lambda v: "train" in v and len(set(v)) == len(v) and "dev" not in v,
    ),
}


def check_data_options(options: dict) -> None:
    """A DataModule's options (its constructor's arguments) in their ranges: a one-line error naming the first
    option out of range otherwise."""
    checks = {}
    for name, (words, test) in OPTION_RANGES.items():
        value = list(options[name]) if isinstance(options[name], tuple | list) else options[name]
        checks[name] = (value, words, test(value))
    check_options("data", **checks)
