"""The training cache: each of the train and val splits resized once into uint8 arrays.

``<cache_dir>/{split}_images.npy`` (N x S x S x 3, RGB) and ``{split}_masks.npy`` (N x S x S),
in manifest order, opened with memory mapping, so no JPEG is decoded during training. Images are
resized with the same bilinear resize that evaluation applies to test images, masks with
nearest-exact sampling (labels are never interpolated; pixel centres line up with the image's).
``cache.json`` records the key, the image size and the manifest's sha256, with the image ids of each
split: a cache with another key is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from cocoseg.data.split import split_rows
from cocoseg.io import atomic_path, read_mask, read_rgb

log = logging.getLogger(__name__)

CACHE_SPLITS = ("train", "val")


class StaleCacheError(RuntimeError):
    """The cache was built for another manifest or image size."""


@dataclass
class CachedSplit:
    images: np.ndarray  # N x S x S x 3 uint8
    masks: np.ndarray  # N x S x S uint8
    image_ids: list[int]


def manifest_sha256(manifest_path: str | Path) -> str:
    return hashlib.sha256(Path(manifest_path).read_bytes()).hexdigest()


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Bilinear, as albumentations' Resize in the evaluation transform."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-exact: output pixel x takes source pixel floor((x + 0.5) * s), the pixel its centre falls in.

    As torch's ``nearest-exact``, in integer arithmetic. cv2.INTER_NEAREST takes floor(x * s),
    which shifts labels against the bilinearly resized image (0.75 source px at 640 -> 256), and
    cv2.INTER_NEAREST_EXACT breaks the ties where a centre falls on a pixel border the other way.
    """
    height, width = mask.shape[:2]
    centres = 2 * np.arange(size) + 1
    return mask[np.ix_(centres * height // (2 * size), centres * width // (2 * size))]


def split_paths(cache_dir: str | Path, split: str) -> tuple[Path, Path]:
    return Path(cache_dir) / f"{split}_images.npy", Path(cache_dir) / f"{split}_masks.npy"


def _fill(rows: pd.DataFrame, run_dir: Path, images: np.ndarray, masks: np.ndarray, size: int, threads: int,
          desc: str) -> None:
    def load(index: int) -> None:
        row = rows.iloc[index]
        images[index] = resize_image(read_rgb(row["image_path"]), size)
        masks[index] = resize_mask(read_mask(run_dir / row["mask_path"]), size)

    # PIL's decoder and cv2.resize release the GIL: threads decode in parallel.
    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(tqdm(pool.map(load, range(len(rows))), total=len(rows), desc=desc, unit="img", mininterval=2))


def _write_split(rows: pd.DataFrame, run_dir: Path, images_path: Path, masks_path: Path, size: int, threads: int,
                 desc: str) -> None:
    images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=(len(rows), size, size, 3))
    masks = np.lib.format.open_memmap(masks_path, mode="w+", dtype=np.uint8, shape=(len(rows), size, size))
    _fill(rows, run_dir, images, masks, size, threads, desc)
    images.flush()
    masks.flush()


def _remove_leftovers(cache_dir: Path) -> None:
    """Temporary files of a build that was killed (as large as the cache itself)."""
    for leftover in cache_dir.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)


def build_cache(manifest_path: str | Path, run_dir: str | Path, cache_dir: str | Path, image_size: int,
                threads: int = 1) -> Path:
    """Write the train and val splits of ``manifest_path`` at ``image_size``; returns cache.json.

    Every file is renamed into place only once all are written, cache.json last: a build that is
    killed leaves none of them, so Snakemake never finds a declared output of an unfinished job.
    """
    cache_dir, run_dir = Path(cache_dir), Path(run_dir)
    manifest = pd.read_csv(manifest_path)
    record = {"image_size": image_size, "manifest_sha256": manifest_sha256(manifest_path), "splits": {}}
    (cache_dir / "cache.json").unlink(missing_ok=True)  # an interrupted rebuild leaves no valid-looking cache
    cache_dir.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(cache_dir)
    with contextlib.ExitStack() as renames:  # renames run in reverse order of entry
        record_tmp = renames.enter_context(atomic_path(cache_dir / "cache.json"))
        for split in CACHE_SPLITS:
            rows = split_rows(manifest, split)
            images_tmp, masks_tmp = (renames.enter_context(atomic_path(path)) for path in split_paths(cache_dir, split))
            _write_split(rows, run_dir, images_tmp, masks_tmp, image_size, threads, f"cache {split} {image_size}px")
            record["splits"][split] = [int(i) for i in rows["image_id"]]
            log.info("cached %d %s images at %d px in %s", len(rows), split, image_size, cache_dir)
        record_tmp.write_text(json.dumps(record))
    return cache_dir / "cache.json"


def check_cache(cache_dir: str | Path, manifest_path: str | Path, image_size: int) -> dict:
    """cache.json, if it was built from this manifest at this size; else a StaleCacheError saying what to do."""
    path = Path(cache_dir) / "cache.json"
    fix = (f"rebuild it: python -m cocoseg cache --manifest {manifest_path} --image-size {image_size} "
           f"--out-dir {cache_dir}")
    if not path.exists():
        raise StaleCacheError(f"{path} does not exist; {fix}")
    record = json.loads(path.read_text())
    if record["image_size"] != image_size:
        raise StaleCacheError(f"{path} holds {record['image_size']} px images, not {image_size} px; {fix}")
    if record["manifest_sha256"] != manifest_sha256(manifest_path):
        raise StaleCacheError(f"{path} was built from another version of {manifest_path}; {fix}")
    return record


def ensure_cache(manifest_path: str | Path, run_dir: str | Path, cache_dir: str | Path, image_size: int,
                 threads: int = 1) -> None:
    """Build the cache unless a matching one is there (for runs outside Snakemake)."""
    try:
        check_cache(cache_dir, manifest_path, image_size)
    except StaleCacheError as reason:
        log.info("building the cache: %s", reason)
        build_cache(manifest_path, run_dir, cache_dir, image_size, threads)


def load_split(cache_dir: str | Path, split: str, manifest_path: str | Path, image_size: int) -> CachedSplit:
    record = check_cache(cache_dir, manifest_path, image_size)
    images_path, masks_path = split_paths(cache_dir, split)
    return CachedSplit(np.load(images_path, mmap_mode="r"), np.load(masks_path, mmap_mode="r"),
                       record["splits"][split])
