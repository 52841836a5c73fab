"""Atomic file output (write to a temporary file beside the target, then rename), and reading images and masks.

No torch here: the table, figure and cache jobs import this, and start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def work_folder(target: Path, tag: str = "", resume: bool = False) -> Path:
    """A folder beside ``target`` for work in progress: fresh (one that a killed run left is removed first), or
    with ``resume`` that one, kept for the work to go on from."""
    partial = target.parent / f".{target.name}{tag}.partial"
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, exist_ok=resume)
    return partial


def publish_folder(partial: Path, target: Path) -> None:
    """The finished work folder made visible at once: renamed into place where ``target`` is missing or empty
    (so a Snakemake ``directory()`` output never exists unfinished), else each file moved into it."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.replace(partial, target)
        return
    for path in partial.iterdir():
        os.replace(path, target / path.name)
    partial.rmdir()


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (no second copy of a large checkpoint on disk), or a copy where
    the filesystem has no hard links; atomic either way. Later atomic rewrites of ``source`` leave it alone."""
    with atomic_path(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> None:
    """A matplotlib figure as PNG, written atomically, then closed."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def write_html_table(frame: pd.DataFrame, path: str | os.PathLike[str], caption: str = "") -> None:
    """An HTML table, so that Snakemake's report shows it (CSV files are only offered for download)."""
    html = frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", border=0, classes="table")
    if caption:
        html = f"<p>{caption}</p>\n{html}"
    write_text(html, path)


def read_rgb(path: str | Path) -> np.ndarray:
    """An image as HxWx3 uint8 RGB (grayscale and CMYK JPEGs converted)."""
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def read_mask(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)
