"""A seeded, stratified, disjoint train/val/test split of the manifest.

Split sizes follow the fractions by largest remainder (so each is within one image of
its exact share). Classes are placed rarest first: every split that lacks a class gets
one image of it while images remain (so a class with three or more images appears in
every split), then each image of the class goes to the split that is furthest below its
share of that class and still has room. Ties and the order of images come from the seed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from cocoseg.config import schema_default
from cocoseg.io import write_csv
from cocoseg.paths import MASKS

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def split_rows(manifest: pd.DataFrame, split: str) -> pd.DataFrame:
    """The manifest's rows of one split (train, val or test), in manifest order, indexed from 0."""
    return manifest[manifest["split"] == split].reset_index(drop=True)


def split_sizes(total: int, fractions: dict[str, float]) -> dict[str, int]:
    """Sizes that add up to ``total``, each the floor of its share plus at most one."""
    norm = sum(fractions.values())
    exact = {name: total * fractions[name] / norm for name in SPLITS}
    sizes = {name: math.floor(share) for name, share in exact.items()}
    by_remainder = sorted(SPLITS, key=lambda name: (sizes[name] - exact[name], SPLITS.index(name)))
    for name in by_remainder[: total - sum(sizes.values())]:
        sizes[name] += 1
    return sizes


def stratified_split(
    presence: pd.DataFrame, fractions: dict[str, float], seed: int
) -> pd.Series:
    """Assign each row (an image; columns: classes, True where present) to a split."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(presence))
    sizes = split_sizes(len(presence), fractions)
    norm = sum(fractions.values())
    room = dict(sizes)
    assigned: dict[int, str] = {}
    have = presence.to_numpy(dtype=bool)

    def place(row: int, split: str) -> None:
        assigned[row] = split
        room[split] -= 1

    for column in np.argsort(have.sum(axis=0), kind="stable"):
        members = [r for r in rows if have[r, column]]
        held = {s: sum(1 for r in members if assigned.get(r) == s) for s in SPLITS}
        free = [r for r in members if r not in assigned]
        for split in SPLITS:  # every split gets the class while images of it remain
            if held[split] == 0 and free and room[split] > 0:
                place(free.pop(0), split)
                held[split] += 1
        for row in free:
            open_splits = [s for s in SPLITS if room[s] > 0]
            if not open_splits:
                break
            deficit = {s: len(members) * fractions[s] / norm - held[s] for s in open_splits}
            best = max(open_splits, key=lambda s: (deficit[s], room[s] / max(sizes[s], 1)))
            place(row, best)
            held[best] += 1
    for row in rows:  # images without any class pixels fill what room is left
        if row not in assigned:
            place(row, max(SPLITS, key=lambda s: room[s]))
    return pd.Series([assigned[r] for r in range(len(presence))], index=presence.index, name="split")


def split_manifest(
    selected_path: str | Path,
    counts_paths: list[str | Path],
    classes: list[str],
    manifest_path: str | Path,
    splits_path: str | Path,
    fractions: dict[str, float],
    seed: int = schema_default("split.seed"),
    images_dir: str | Path | None = None,
    mask_dirs: list[str] | None = None,
) -> pd.DataFrame:
    """Join the selection with the mask pixel counts, split it, write manifest.csv and splits.csv.

    ``mask_dirs``: the folder (relative to the run folder) of each counts file's masks; default
    ``data/masks`` for all.
    """
    selected = pd.read_csv(selected_path)
    mask_dirs = mask_dirs or [MASKS] * len(counts_paths)
    if len(mask_dirs) != len(counts_paths):
        raise ValueError(f"{len(counts_paths)} counts files but {len(mask_dirs)} mask folders: give one mask folder "
                         "(--mask-dirs) per counts file, in the same order")
    counts = pd.concat([pd.read_csv(path).assign(mask_dir=folder) for path, folder in zip(counts_paths, mask_dirs)],
                       ignore_index=True)
    manifest = selected.merge(counts, on="image_id", how="left", validate="one_to_one")
    missing = manifest["pixels_background"].isna()
    if missing.any():
        raise ValueError(f"no mask pixel counts for images {manifest.loc[missing, 'image_id'].tolist()[:10]}")
    manifest = manifest.sort_values("image_id").reset_index(drop=True)
    pixel_columns = [f"pixels_{name}" for name in classes]
    manifest[[*pixel_columns, "pixels_background", "pixels_ignore"]] = manifest[
        [*pixel_columns, "pixels_background", "pixels_ignore"]].astype("int64")
    manifest["split"] = stratified_split(manifest[pixel_columns] > 0, fractions, seed)
    manifest["mask_path"] = [f"{folder}/{i}.png" for folder, i in zip(manifest.pop("mask_dir"), manifest["image_id"])]
    if images_dir is not None:
        manifest["image_path"] = [str(Path(images_dir) / name) for name in manifest["file_name"]]
    front = ["image_id", "file_name", "width", "height", "split", "mask_path"]
    manifest = manifest[front + [c for c in manifest.columns if c not in front]]
    write_csv(manifest, manifest_path)
    write_csv(manifest[["image_id", "split"]], splits_path)
    sizes = manifest["split"].value_counts().reindex(list(SPLITS), fill_value=0).to_dict()
    log.info("split %d images: %s", len(manifest), sizes)
    for name, column in zip(classes, pixel_columns):
        present = manifest[manifest[column] > 0]["split"].value_counts()
        absent = [s for s in SPLITS if s not in present.index]
        if absent and (manifest[column] > 0).sum() >= 3:
            log.warning("class %r is absent from %s despite %d images", name, absent, (manifest[column] > 0).sum())
    return manifest
