"""A synthetic dataset in COCO's own formats, for the demo and the tests.

It writes what COCO serves: a zip of JPEGs under ``val2014/`` and a zip holding
``annotations/instances_val2014.json``. The images hold objects of five target classes
and three distractor categories, each with its own shape, colour and texture so that a
small network learns them in a few CPU epochs, and they cover the cases the pipeline
must get right: multi-part polygons, uncompressed-RLE crowd regions, compressed RLE,
overlapping and nested objects, tiny objects, images without a target class, and
grayscale and CMYK JPEGs. Objects are drawn largest first, as the mask rule paints them.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from cocoseg.categories import COCO_CATEGORIES
from cocoseg.config import schema_default
from cocoseg.io import atomic_path

log = logging.getLogger(__name__)

IMAGES_MEMBER_DIR = "val2014"
ANNOTATIONS_MEMBER = "annotations/instances_val2014.json"
DEFAULT_SIZES = tuple(tuple(size) for size in schema_default("dataset.synthetic.sizes"))  # (width, height)
CATEGORY_IDS = {name: cid for cid, name, _ in COCO_CATEGORIES}

Polygon = list[float]


def _ellipse(cx: float, cy: float, rx: float, ry: float, points: int = 18) -> Polygon:
    angles = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return np.column_stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)]).ravel().tolist()


def _rect(cx: float, cy: float, half_w: float, half_h: float) -> Polygon:
    return [cx - half_w, cy - half_h, cx + half_w, cy - half_h, cx + half_w, cy + half_h, cx - half_w, cy + half_h]


def _shape(name: str, cx: float, cy: float, s: float) -> list[Polygon]:
    """Polygon parts of one object of category ``name`` centred at (cx, cy) with size s."""
    if name == "person":  # body and head: two parts
        return [_ellipse(cx, cy + 0.15 * s, 0.2 * s, 0.36 * s), _ellipse(cx, cy - 0.36 * s, 0.13 * s, 0.13 * s)]
    if name == "bicycle":  # two wheels and a frame: three parts
        return [_ellipse(cx - 0.3 * s, cy, 0.2 * s, 0.2 * s), _ellipse(cx + 0.3 * s, cy, 0.2 * s, 0.2 * s),
                _rect(cx, cy - 0.05 * s, 0.3 * s, 0.06 * s)]
    if name == "car":  # octagon
        w, h, c = 0.45 * s, 0.24 * s, 0.1 * s
        return [[cx - w + c, cy - h, cx + w - c, cy - h, cx + w, cy - h + c, cx + w, cy + h - c,
                 cx + w - c, cy + h, cx - w + c, cy + h, cx - w, cy + h - c, cx - w, cy - h + c]]
    if name == "motorcycle":  # triangle
        return [[cx - 0.45 * s, cy + 0.3 * s, cx + 0.45 * s, cy + 0.3 * s, cx, cy - 0.35 * s]]
    if name == "airplane":  # fuselage and wings
        return [_rect(cx, cy, 0.48 * s, 0.08 * s), _rect(cx, cy, 0.08 * s, 0.38 * s)]
    if name == "dog":
        return [_ellipse(cx, cy, 0.4 * s, 0.22 * s, points=10)]
    if name == "chair":
        return [_rect(cx, cy, 0.25 * s, 0.25 * s)]
    if name == "bus":
        return [_rect(cx, cy, 0.48 * s, 0.18 * s)]
    raise ValueError(f"no synthetic shape for {name!r}")


# Base colour and texture pattern per category.
APPEARANCE: dict[str, tuple[tuple[int, int, int], str]] = {
    "person": ((205, 45, 45), "vstripes"),
    "bicycle": ((40, 175, 60), "dots"),
    "car": ((45, 75, 210), "hstripes"),
    "motorcycle": ((235, 170, 30), "checker"),
    "airplane": ((170, 70, 205), "plain"),
    "dog": ((125, 85, 45), "noise"),
    "chair": ((128, 128, 128), "diagonal"),
    "bus": ((30, 160, 160), "checker"),
}
TARGETS = ("person", "bicycle", "car", "motorcycle", "airplane")
TARGET_WEIGHTS = (0.45, 0.1, 0.2, 0.12, 0.13)  # imbalanced, as in COCO: people everywhere, few bicycles
DISTRACTORS = ("dog", "chair", "bus")


@functools.lru_cache(maxsize=64)
def _texture(pattern: str, height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    patterns = {
        "vstripes": (xx // 2) % 2,
        "hstripes": (yy // 2) % 2,
        "checker": (xx // 3 + yy // 3) % 2,
        "diagonal": ((xx + yy) // 3) % 2,
        "dots": ((xx % 4 < 2) & (yy % 4 < 2)).astype(int),
        "plain": np.zeros_like(xx),
        "noise": np.zeros_like(xx),
    }
    return ((patterns[pattern] * 2 - 1) * 28.0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _noise(height: int, width: int) -> np.ndarray:
    """Sensor noise, drawn once per size and shifted per image: drawing it fresh dominates the run time."""
    return 6 * np.random.default_rng(height * width).standard_normal((height, width, 3), dtype=np.float32)


@dataclass
class _Object:
    category: str
    rle: dict[str, Any]
    area: int
    iscrowd: int = 0
    encoding: str = "polygon"  # polygon | rle (compressed)
    polygons: list[Polygon] | None = None


def _polygon_object(name: str, polygons: list[Polygon], height: int, width: int) -> _Object:
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return _Object(name, rle, int(mask_utils.area(rle)), polygons=polygons)


def _random_objects(rng: np.random.Generator, height: int, width: int) -> list[_Object]:
    side = min(height, width)
    with_targets = rng.random() > 0.1
    count = int(rng.integers(1, 5))
    objects = []
    for i in range(count):
        if with_targets and (i == 0 or rng.random() < 0.7):
            name = str(rng.choice(TARGETS, p=TARGET_WEIGHTS))
        else:
            name = str(rng.choice(DISTRACTORS))
        s = side * rng.uniform(0.3, 0.75)
        cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height
        objects.append(_polygon_object(name, _shape(name, cx, cy, s), height, width))
        if with_targets and rng.random() < 0.15:  # a smaller object of another class inside this one
            inner = str(rng.choice([t for t in TARGETS if t != name]))
            objects.append(_polygon_object(inner, _shape(inner, cx, cy, s * 0.4), height, width))
    if with_targets and rng.random() < 0.12:  # tiny object, a few pixels across
        name = str(rng.choice(TARGETS))
        cx, cy = rng.uniform(5, width - 5), rng.uniform(5, height - 5)
        objects.append(_polygon_object(name, _shape(name, cx, cy, rng.uniform(4, 8)), height, width))
    if with_targets and rng.random() < 0.12:  # a crowd of people as one uncompressed RLE
        crowd = np.zeros((height, width), dtype=bool)
        x0 = rng.uniform(0.1, 0.6) * width
        y0 = rng.uniform(0.2, 0.8) * height
        for k in range(int(rng.integers(3, 6))):
            parts = _shape("person", x0 + k * side * 0.07, y0, side * 0.16)
            crowd |= mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(parts, height, width))).astype(bool)
        rle = mask_utils.encode(np.asfortranarray(crowd.astype(np.uint8)))
        objects.append(_Object("person", rle, int(crowd.sum()), iscrowd=1, encoding="uncompressed"))
    for obj in objects:
        if not obj.iscrowd and rng.random() < 0.2:
            obj.encoding = "rle"
    return [o for o in objects if o.area > 0]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    top, bottom = rng.uniform(60, 200, size=3), rng.uniform(60, 200, size=3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    return np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3)).astype(np.float32)


def _render(rng: np.random.Generator, objects: list[_Object], height: int, width: int) -> np.ndarray:
    pixels = _background(rng, height, width)
    # crowd regions first, then instances largest first: a smaller object lies on top
    for obj in sorted(objects, key=lambda o: (not o.iscrowd, -o.area)):
        colour, pattern = APPEARANCE[obj.category]
        fill = (np.array(colour) + rng.uniform(-20, 20, size=3)).astype(np.float32)
        inside = mask_utils.decode(obj.rle).astype(bool)
        pixels[inside] = fill + _texture(pattern, height, width)[inside][:, None]
    pixels += np.roll(_noise(height, width), int(rng.integers(height * width)))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _segmentation(obj: _Object) -> Any:
    if obj.encoding == "polygon":
        return obj.polygons
    if obj.encoding == "rle":
        return {"size": obj.rle["size"], "counts": obj.rle["counts"].decode("ascii")}
    flat = mask_utils.decode(obj.rle).ravel(order="F")
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = ([0] if flat[0] else []) + np.diff(bounds).tolist()
    return {"size": obj.rle["size"], "counts": runs}


def _jpeg(pixels: np.ndarray, mode: str) -> bytes:
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def unpack(images_zip: str | Path, annotations_zip: str | Path, dest: str | Path) -> tuple[Path, Path]:
    """Every image into ``dest/images`` and the instances JSON to ``dest/instances.json`` (tests, benchmarks)."""
    from cocoseg.data.extract import extract_member

    images_dir = Path(dest) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(images_zip) as archive:
        for info in archive.infolist():
            (images_dir / Path(info.filename).name).write_bytes(archive.read(info))
    return images_dir, extract_member(annotations_zip, ANNOTATIONS_MEMBER, Path(dest) / "instances.json")


def generate(
    images_zip: str | Path,
    annotations_zip: str | Path,
    num_images: int = schema_default("dataset.synthetic.num_images"),
    seed: int = schema_default("dataset.synthetic.seed"),
    sizes: tuple[tuple[int, int], ...] | list[list[int]] = DEFAULT_SIZES,
) -> dict[str, int]:
    """Write the synthetic images and annotations zips; return counts of what was made."""
    rng = np.random.default_rng(seed)
    image_ids = sorted(int(i) for i in rng.choice(np.arange(1, 600_000), size=num_images, replace=False))
    images, annotations = [], []
    counts = {"images": num_images, "grayscale": 0, "cmyk": 0}
    with atomic_path(images_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for image_id in tqdm(image_ids, desc="synth", unit="img", mininterval=1):
            width, height = (int(v) for v in sizes[int(rng.integers(len(sizes)))])
            objects = _random_objects(rng, height, width)
            mode = str(rng.choice(["RGB", "L", "CMYK"], p=[0.93, 0.05, 0.02]))
            counts["grayscale"] += mode == "L"
            counts["cmyk"] += mode == "CMYK"
            file_name = f"COCO_val2014_{image_id:012d}.jpg"
            archive.writestr(f"{IMAGES_MEMBER_DIR}/{file_name}", _jpeg(_render(rng, objects, height, width), mode))
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            for obj in objects:
                annotations.append({
                    "image_id": image_id, "category_id": CATEGORY_IDS[obj.category], "iscrowd": obj.iscrowd,
                    "segmentation": _segmentation(obj), "area": float(obj.area),
                    "bbox": [float(v) for v in mask_utils.toBbox(obj.rle)],
                })
    order = rng.permutation(len(annotations))  # annotation order must not matter downstream
    for ann_id, index in enumerate(order, start=1):
        annotations[index]["id"] = int(ann_id)
    annotations = [annotations[i] for i in order]
    counts["annotations"] = len(annotations)
    categories = [{"id": cid, "name": name, "supercategory": sup} for cid, name, sup in COCO_CATEGORIES]
    document = {"info": {"description": f"cocoseg synthetic dataset, seed {seed}"}, "licenses": [],
                "images": images, "annotations": annotations, "categories": categories}
    with atomic_path(annotations_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(ANNOTATIONS_MEMBER, json.dumps(document))
    log.info("synthetic dataset: %s", counts)
    return counts
