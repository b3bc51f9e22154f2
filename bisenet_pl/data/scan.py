"""The pre-flight scan: every image and label of the splits a run reads, decoded once before
anything starts, every problem reported at once."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from bisenet_pl.errors import DataError, data_problems


def scan_splits(splits: Iterable[str], dataset: Callable[[str], object], root: Path) -> None:
    """Read every sample of ``splits`` (``dataset(split)`` builds one); raise one
    :class:`DataError` listing every problem found."""
    problems: list[str] = []
    for split in splits:
        try:
            samples = dataset(split)
        except DataError as error:
            problems.append(f"{split}: {error}")
            continue
        for index in range(len(samples)):
            try:
                samples.load(index)
            except DataError as error:
                problems.append(f"{split}: {error}")
    if problems:
        raise data_problems(f"{len(problems)} problem(s) in the data at {root}", problems)
