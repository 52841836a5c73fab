"""Mask building speed: this project's path against the seed study's, on the same images, in one run.

The seed's way (process_data.py of the study): pycocotools' COCO API, one annToMask per
annotation painted in annotation order (higher class wins), and the image re-saved
through skimage (a lossy JPEG re-encode) beside the mask. This project's way: the
shard function of the masks rule (validated RLEs, area-ordered painting, palette PNG,
no image written). Both write their masks to disk.

    python benchmarks/bench_masks.py --images 300
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore", category=DeprecationWarning)

from pycocotools.coco import COCO  # noqa: E402
from skimage import io as skio  # noqa: E402

from cocoseg.data.masks import build_masks  # noqa: E402
from cocoseg.data.select import select_images  # noqa: E402
from cocoseg.data.synth import generate, unpack  # noqa: E402

CLASSES = ["person", "bicycle", "car", "motorcycle", "airplane"]


def prepare(root: Path, num_images: int) -> tuple[Path, Path]:
    generate(root / "images.zip", root / "annotations.zip", num_images=num_images, seed=0, sizes=[(640, 480)])
    return unpack(root / "images.zip", root / "annotations.zip", root)


def seed_way(annotations: Path, images: Path, image_ids: list[int], out: Path) -> None:
    coco = COCO(str(annotations))
    cat_ids = coco.getCatIds(catNms=CLASSES)
    label_of = {cid: CLASSES.index(coco.cats[cid]["name"]) + 1 for cid in cat_ids}
    out.mkdir(parents=True, exist_ok=True)
    for image_id in image_ids:
        info = coco.imgs[image_id]
        mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=cat_ids, iscrowd=None)):
            mask = np.maximum(mask, coco.annToMask(ann) * label_of[ann["category_id"]])
        image = skio.imread(images / info["file_name"])
        if image.ndim == 3 and image.shape[2] == 4:  # CMYK reads as 4 channels, which JPEG cannot store
            image = image[..., :3]
        skio.imsave(out / info["file_name"], image, check_contrast=False)
        skio.imsave(out / f"{image_id}.png", mask, check_contrast=False)


def timed(func, *args) -> float:
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, annotations = prepare(root, args.images)
        select_images(annotations, images, CLASSES, root / "selection")
        instances = root / "selection" / "instances.json"
        image_ids = [image["id"] for image in json.loads(instances.read_text())["images"]]
        objects = len(json.loads(instances.read_text())["annotations"]) / len(image_ids)
        seconds_seed = timed(seed_way, annotations, images, image_ids, root / "seed")
        seconds_ours = timed(build_masks, instances, root / "ours", root / "counts.csv")
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {platform.system()}",
        "images": len(image_ids), "size": "640x480", "target_objects_per_image": round(objects, 2),
        "seed_images_per_s": len(image_ids) / seconds_seed, "ours_images_per_s": len(image_ids) / seconds_ours,
    }
    result["ratio"] = result["ours_images_per_s"] / result["seed_images_per_s"]
    print(f"{'path':<28}{'images/s':>10}")
    print(f"{'seed (annToMask + skimage)':<28}{result['seed_images_per_s']:>10.1f}")
    print(f"{'cocoseg masks rule':<28}{result['ours_images_per_s']:>10.1f}")
    print(f"ratio: {result['ratio']:.2f}x on {result['images']} images of 640x480 "
          f"({objects:.1f} target objects each), one process")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
