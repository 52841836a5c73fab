"""Selection: candidate images, checked for usability, sampled with a seed.

A candidate has at least one non-crowd annotation of a target class. It is usable when
its file exists, decodes completely, has the annotated size, and every target annotation
that the mask rule will paint can be decoded. Candidates are checked in a seeded random
order until ``max_images`` usable ones are found, which is a seeded uniform sample of the
usable candidates (never "the first N"); every candidate found unusable on the way is
written to ``rejected.csv`` with its reason.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from cocoseg.coco import CocoIndex, SegmentationError, load_index, segmentation_rle
from cocoseg.config import schema_default
from cocoseg.io import atomic_path, write_csv

log = logging.getLogger(__name__)


def image_problem(path: str | Path, width: int, height: int) -> str | None:
    """Why the image file cannot be used, or None if it decodes fully at the annotated size."""
    path = Path(path)
    if not path.is_file():
        return f"missing file: {path} does not exist"
    try:
        with Image.open(path) as image:
            if image.size != (width, height):
                return f"size mismatch: image is {image.size[0]}x{image.size[1]}, annotation says {width}x{height}"
            image.load()  # a full decode: finds truncated and corrupt data
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"unreadable image: {e}"
    return None


def annotation_problem(index: CocoIndex, image_id: int, crowd: str) -> str | None:
    """Why a target annotation of this image cannot be decoded, or None."""
    image = index.images[image_id]
    for ann in index.annotations[image_id]:
        if ann.get("iscrowd", 0) and crowd == "background":
            continue
        try:
            segmentation_rle(ann.get("segmentation"), image["height"], image["width"])
        except SegmentationError as e:
            return f"bad annotation: id {ann.get('id')}: {e}"
    return None


def _check_files(batch: list[tuple[str, int, int]], threads: int) -> list[str | None]:
    if threads <= 1 or len(batch) < 32:
        return [image_problem(*item) for item in batch]
    with ProcessPoolExecutor(threads) as pool:
        return list(pool.map(image_problem, *zip(*batch), chunksize=16))


def _filtered_instances(index: CocoIndex, selected: list[int], classes: list[str]) -> dict[str, Any]:
    """The instances JSON reduced to the selected images and target-class annotations."""
    label_of = index.class_ids
    return {
        "classes": classes,
        "categories": [{"id": cid, "name": classes[label - 1], "label": label} for cid, label in label_of.items()],
        "images": [index.images[i] for i in selected],
        "annotations": [ann for i in selected for ann in index.annotations[i]],
    }


def select_images(
    annotations_path: str | Path,
    images_dir: str | Path,
    classes: list[str],
    out_dir: str | Path,
    max_images: int | None = None,
    seed: int = schema_default("dataset.seed"),
    crowd: str = schema_default("dataset.crowd"),
    threads: int = 1,
) -> pd.DataFrame:
    """Write ``selected.csv``, ``rejected.csv`` and ``instances.json`` under ``out_dir``."""
    out_dir, images_dir = Path(out_dir), Path(images_dir)
    index = load_index(Path(annotations_path), classes)
    order = np.random.default_rng(seed).permutation(index.candidates()).tolist()
    wanted = len(order) if max_images is None else min(max_images, len(order))
    selected: list[int] = []
    rejected: list[dict[str, Any]] = []
    position = 0
    with tqdm(total=wanted, desc="select", unit="img", mininterval=1) as bar:
        while len(selected) < wanted and position < len(order):
            batch = order[position : position + max(64, 2 * (wanted - len(selected)))]
            position += len(batch)
            items = [(str(images_dir / index.images[i]["file_name"]), index.images[i]["width"],
                      index.images[i]["height"]) for i in batch]
            for image_id, file_issue in zip(batch, _check_files(items, threads)):
                reason = file_issue or annotation_problem(index, image_id, crowd)
                if reason:
                    rejected.append({"image_id": image_id, "file_name": index.images[image_id]["file_name"],
                                     "reason": reason})
                elif len(selected) < wanted:
                    selected.append(image_id)
                    bar.update()
    selected.sort()
    frame = pd.DataFrame([{k: index.images[i][k] for k in ("file_name", "width", "height")} | {"image_id": i}
                          for i in selected], columns=["image_id", "file_name", "width", "height"])
    rejects = pd.DataFrame(rejected, columns=["image_id", "file_name", "reason"]).sort_values("image_id")
    write_csv(frame, out_dir / "selected.csv")
    write_csv(rejects, out_dir / "rejected.csv")
    with atomic_path(out_dir / "instances.json") as tmp:
        tmp.write_text(json.dumps(_filtered_instances(index, selected, classes)), encoding="utf-8")
    log.info("%d candidates, %d checked, %d selected, %d rejected", len(order), position, len(selected), len(rejected))
    if max_images is not None and len(selected) < max_images:
        log.warning("only %d usable candidates for max_images=%d", len(selected), max_images)
    for reason, count in rejects["reason"].str.split(":").str[0].value_counts().items():
        log.info("rejected %d: %s", count, reason)
    return frame
