"""COCO annotations: candidate images and segmentation decoding (the categories: cocoseg.categories).

Segmentations are validated before pycocotools sees them: its C decoder writes
``sum(counts)`` bytes without a bounds check, so an RLE whose counts do not add up
to ``height * width`` would corrupt memory instead of raising.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from cocoseg.categories import check_class_names

# pycocotools 2.0.11 calls np.array(copy=False) on numpy 2: harmless, and noisy in every log.
warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy", category=DeprecationWarning)

IGNORE_LABEL = 255
CROWD_POLICIES = ("ignore", "label", "background")


class SegmentationError(ValueError):
    """An annotation's segmentation cannot be decoded."""


@dataclass
class CocoIndex:
    """The parts of a COCO instances file that the data stage needs, indexed by image."""

    images: dict[int, dict[str, Any]]
    class_ids: dict[int, int]  # COCO category id -> label (1..K)
    annotations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # target classes only

    def candidates(self) -> list[int]:
        """Images with at least one non-crowd annotation of a target class, ascending."""
        return sorted(
            image_id
            for image_id, anns in self.annotations.items()
            if image_id in self.images and any(not a.get("iscrowd", 0) for a in anns)
        )


def load_index(annotations_path: Path, classes: list[str]) -> CocoIndex:
    """Read a COCO instances JSON and keep the annotations of ``classes``."""
    with open(annotations_path, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{annotations_path}: not a COCO instances file (no {key!r} key)")
    names = {c["name"]: c["id"] for c in data["categories"]}
    check_class_names(classes, list(names), str(annotations_path))
    class_ids = {names[name]: label for label, name in enumerate(classes, start=1)}
    annotations: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in data["annotations"]:
        if ann.get("category_id") in class_ids:
            annotations[ann["image_id"]].append(ann)
    images = {img["id"]: img for img in data["images"]}
    return CocoIndex(images=images, class_ids=class_ids, annotations=dict(annotations))


def rle_string_counts(counts: bytes) -> list[int]:
    """Decode COCO's compressed RLE string into run lengths (pycocotools' rleFrString)."""
    runs: list[int] = []
    pos = 0
    while pos < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(counts):
                raise SegmentationError("compressed RLE ends inside a run length")
            chunk = counts[pos] - 48
            if not 0 <= chunk < 64:
                raise SegmentationError(f"compressed RLE has an invalid character {chr(counts[pos])!r}")
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            pos += 1
            shift += 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _check_runs(runs: list[int], height: int, width: int) -> None:
    if any(r < 0 for r in runs):
        raise SegmentationError("RLE has a negative run length")
    if sum(runs) != height * width:
        raise SegmentationError(f"RLE run lengths add up to {sum(runs)}, not height*width = {height * width}")


def _polygon_rle(polygons: list[Any], height: int, width: int) -> dict[str, Any]:
    if not polygons:
        raise SegmentationError("empty segmentation (no polygon)")
    parts = []
    for part in polygons:
        if not isinstance(part, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in part
        ):
            raise SegmentationError("polygon is not a list of finite numbers")
        if len(part) % 2:
            raise SegmentationError(f"polygon has an odd number of coordinates ({len(part)})")
        if len(part) >= 6:  # fewer than 3 points has no area (and pycocotools reads 4 numbers as a box)
            parts.append([float(v) for v in part])
    if not parts:
        raise SegmentationError("empty segmentation (no polygon with 3 or more points)")
    return mask_utils.merge(mask_utils.frPyObjects(parts, height, width))


def _dict_rle(segm: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    size, counts = segm.get("size"), segm.get("counts")
    if not isinstance(size, list) or [int(s) for s in size] != [height, width]:
        raise SegmentationError(f"RLE size {size} differs from the image size [{height}, {width}]")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in counts):
            raise SegmentationError("uncompressed RLE counts are not all integers")
        _check_runs(counts, height, width)
        return mask_utils.frPyObjects(segm, height, width)
    if isinstance(counts, (str, bytes)):
        raw = counts.encode("ascii") if isinstance(counts, str) else counts
        _check_runs(rle_string_counts(raw), height, width)
        return {"size": [height, width], "counts": raw}
    raise SegmentationError(f"RLE counts of type {type(counts).__name__} (expected list or string)")


def segmentation_rle(segm: Any, height: int, width: int) -> dict[str, Any]:
    """Validate one annotation's segmentation and return it as a compressed RLE."""
    if isinstance(segm, list):
        return _polygon_rle(segm, height, width)
    if isinstance(segm, dict):
        return _dict_rle(segm, height, width)
    raise SegmentationError(f"segmentation of type {type(segm).__name__} (expected polygons or RLE)")


def decode(rle: dict[str, Any]) -> np.ndarray:
    """Decode one compressed RLE into a boolean HxW mask."""
    return mask_utils.decode(rle).astype(bool)
