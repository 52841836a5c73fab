"""Class distribution per split: images containing each class and pixel share, as tables and bar charts."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from cocoseg.data.split import SPLITS
from cocoseg.io import save_figure, write_csv, write_html_table

log = logging.getLogger(__name__)


def class_distribution(manifest: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """One row per (split, class): images containing it, their share, its pixels and pixel share."""
    rows = []
    for split in (*SPLITS, "all"):
        part = manifest if split == "all" else manifest[manifest["split"] == split]
        labelled = part[[f"pixels_{c}" for c in ("background", *classes)]].to_numpy().sum()
        for name in ("background", *classes):
            pixels = int(part[f"pixels_{name}"].sum())
            images = int((part[f"pixels_{name}"] > 0).sum())
            rows.append({
                "split": split, "class": name, "images": images,
                "image_share": images / len(part) if len(part) else 0.0,
                "pixels": pixels, "pixel_share": pixels / labelled if labelled else 0.0,
            })
    return pd.DataFrame(rows)


def _grouped_bars(table: pd.DataFrame, value: str, ylabel: str, title: str, path: Path) -> None:
    pivot = table[table["split"] != "all"].pivot(index="class", columns="split", values=value)
    pivot = pivot.reindex(index=table["class"].unique(), columns=list(SPLITS))
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    pivot.plot.bar(ax=ax, rot=0, width=0.8, color=["#4c72b0", "#dd8452", "#55a868"])
    ax.set_ylabel(ylabel)
    ax.set_xlabel("")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f" if value.endswith("share") else "%d", fontsize=7, padding=1)
    save_figure(fig, path, dpi=120)


def write_stats(
    manifest_path: str | Path,
    classes: list[str],
    table_csv: str | Path,
    table_html: str | Path,
    images_figure: str | Path,
    pixels_figure: str | Path,
) -> pd.DataFrame:
    manifest = pd.read_csv(manifest_path)
    table = class_distribution(manifest, classes)
    write_csv(table, table_csv)
    write_html_table(table, table_html)
    objects = table[table["class"] != "background"]
    _grouped_bars(objects, "image_share", "share of images containing the class",
                  "Images containing each class, per split", Path(images_figure))
    _grouped_bars(table, "pixel_share", "share of labelled pixels",
                  "Pixel share per class (background included), per split", Path(pixels_figure))
    log.info("class distribution:\n%s", table[table["split"] == "all"].to_string(index=False))
    return table
