"""Writing files so that none is ever half-written, checking output folders before any work, and finding
the last checkpoint to resume from."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bisenet_pl.errors import ConfigError


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` only when the block
    succeeds and is removed when it fails, so a crash never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def check_not_a_folder(path: Path, option: str, example: Path | None = None) -> None:
    """A file is to be written at ``path``: refuse a folder there, in one line naming ``option``."""
    if path.is_dir():
        raise ConfigError(
            f"{option} {path} is a folder: give the file's path" + (f", e.g. {example}" if example else "")
        )


def check_writable(folder: str | Path, option: str) -> None:
    """Fail before any work unless ``folder`` can be created and written: its nearest existing
    ancestor must be a folder in which a file can be made (tried, then removed at once)."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"{option} {folder}: cannot write in {existing} ({error.strerror or error})") from None


def check_outside_source(output_dir: Path, source: Path | None) -> None:
    """Predictions never go inside the folder they are read from: it is searched recursively, so the next
    run would take the written label maps and overlays for images."""
    if source is None or not source.is_dir():
        return
    output, folder = output_dir.expanduser().resolve(), source.expanduser().resolve()
    if output == folder or folder in output.parents:
        raise ConfigError(
            f"prediction_writer.output_dir {output_dir} is inside data.predict_source {source}, which is read "
            "with its subfolders: the next run would take the predictions for images. Give a folder outside it"
        )


def find_last_checkpoint(roots: list[Path]) -> Path:
    """The newest last.ckpt under any of ``roots`` (the default root dir and the loggers' save
    dirs), whichever logger version or W&B run wrote it.

    Lightning alone would look only in the new run's own (next version's) folder.
    """
    found = {path for root in roots for path in root.rglob("last*.ckpt")}
    if not found:
        where = ", ".join(str(root) for root in dict.fromkeys(roots))
        raise ConfigError(
            f"--ckpt_path last: no last.ckpt under {where} (trainer.default_root_dir, logger save_dir) to resume from"
        )
    return max(found, key=lambda path: path.stat().st_mtime)
