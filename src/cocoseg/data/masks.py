"""Label masks: one PNG per image, 0 background, 1..K the classes, 255 ignore.

Non-crowd target instances are painted in decreasing order of decoded pixel area (ties:
ascending annotation id), so a smaller object lies on top of a larger one whatever the
annotation order. Crowd regions follow the ``crowd`` policy: ``ignore`` marks them 255
where no instance was painted, ``label`` paints them as instances, ``background`` drops them.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from cocoseg.coco import CROWD_POLICIES, IGNORE_LABEL, segmentation_rle
from cocoseg.config import schema_default
from cocoseg.io import atomic_path, publish_folder, work_folder, write_csv

log = logging.getLogger(__name__)


def palette(num_classes: int) -> list[int]:
    """A PASCAL-VOC-style palette: label i gets a distinct colour, 255 white."""
    colours = []
    for label in range(256):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.extend((r, g, b))
    colours[3 * IGNORE_LABEL : 3 * IGNORE_LABEL + 3] = (255, 255, 255)
    return colours


def render_mask(
    annotations: list[dict[str, Any]], labels: dict[int, int], height: int, width: int,
    crowd: str = schema_default("dataset.crowd"),
) -> np.ndarray:
    """The label mask of one image from its target-class annotations."""
    if crowd not in CROWD_POLICIES:
        raise ValueError(f"crowd policy {crowd!r}; expected one of {CROWD_POLICIES}")
    mask = np.zeros((height, width), dtype=np.uint8)
    instances, crowds = [], []
    for ann in annotations:
        is_crowd = bool(ann.get("iscrowd", 0))
        if is_crowd and crowd == "background":
            continue
        rle = segmentation_rle(ann["segmentation"], height, width)
        if is_crowd and crowd == "ignore":
            crowds.append(rle)
        else:
            instances.append((-int(mask_utils.area(rle)), ann["id"], labels[ann["category_id"]], rle))
    for _, _, label, rle in sorted(instances, key=lambda item: item[:2]):
        mask[mask_utils.decode(rle).astype(bool)] = label
    if crowds:
        crowd_region = mask_utils.decode(mask_utils.merge(crowds, intersect=False)).astype(bool)
        mask[crowd_region & (mask == 0)] = IGNORE_LABEL
    return mask


def save_mask(mask: np.ndarray, path: str | Path, colours: list[int]) -> None:
    """Write a palette PNG atomically: the pixel values are the labels, the palette is for people."""
    image = Image.fromarray(mask)
    image.putpalette(colours)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", compress_level=1)


def pixel_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixels per label 0..K, then the ignore count."""
    counts = np.bincount(mask.ravel(), minlength=256)
    return np.append(counts[: num_classes + 1], counts[IGNORE_LABEL])


def build_masks(
    instances_path: str | Path,
    masks_dir: str | Path,
    counts_path: str | Path,
    crowd: str = schema_default("dataset.crowd"),
    shard: int = 0,
    num_shards: int = 1,
) -> pd.DataFrame:
    """Write the masks of one shard (every ``num_shards``-th selected image) and its pixel counts."""
    with open(instances_path, encoding="utf-8") as f:
        instances = json.load(f)
    classes: list[str] = instances["classes"]
    labels = {c["id"]: c["label"] for c in instances["categories"]}
    by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in instances["annotations"]:
        by_image[ann["image_id"]].append(ann)
    images = sorted(instances["images"], key=lambda image: image["id"])[shard::num_shards]
    masks_dir = Path(masks_dir)
    # Work in progress in a folder of this shard's, renamed into place when complete: a Snakemake
    # directory() output then never exists unfinished, and a power loss leaves nothing incomplete.
    partial = work_folder(masks_dir, f".{shard}")
    colours = palette(len(classes))
    rows = []
    for image in tqdm(images, desc=f"masks {shard + 1}/{num_shards}", unit="img", mininterval=1):
        mask = render_mask(by_image[image["id"]], labels, image["height"], image["width"], crowd)
        save_mask(mask, partial / f"{image['id']}.png", colours)
        rows.append([image["id"], *pixel_counts(mask, len(classes)).tolist()])
    columns = ["image_id", "pixels_background", *(f"pixels_{name}" for name in classes), "pixels_ignore"]
    frame = pd.DataFrame(rows, columns=columns)
    publish_folder(partial, masks_dir)
    write_csv(frame, counts_path)
    log.info("shard %d/%d: %d masks in %s", shard + 1, num_shards, len(frame), masks_dir)
    return frame
