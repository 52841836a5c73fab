"""Bad inputs: each gets a rejected.csv row or a clear error, and the rest of the data is produced."""

import json
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import CLASSES
from PIL import Image

from cocoseg.coco import load_index
from cocoseg.data.masks import build_masks
from cocoseg.data.select import select_images
from cocoseg.data.split import split_manifest

FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


@pytest.fixture
def damaged(synthetic, tmp_path):
    """A copy of the synthetic data with one image per kind of damage; returns (root, {kind: image_id})."""
    images = tmp_path / "images"
    shutil.copytree(synthetic.images_dir, images)
    document = json.loads(synthetic.annotations.read_text())
    index = load_index(synthetic.annotations, CLASSES)
    polygon_only = [i for i in index.candidates()
                    if all(isinstance(a["segmentation"], list) for a in index.annotations[i])]
    kinds = ["truncated", "corrupt", "missing", "resized", "empty_segmentation", "malformed_rle"]
    victims = dict(zip(kinds, polygon_only))
    by_id = {image["id"]: image for image in document["images"]}

    def path(kind):
        return images / by_id[victims[kind]]["file_name"]

    data = path("truncated").read_bytes()
    path("truncated").write_bytes(data[: len(data) // 2])
    path("corrupt").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8)
    path("missing").unlink()
    by_id[victims["resized"]]["width"] += 3
    target = {c["id"] for c in document["categories"] if c["name"] in CLASSES}
    anns = [a for a in document["annotations"] if a["category_id"] in target]
    next(a for a in anns if a["image_id"] == victims["empty_segmentation"])["segmentation"] = []
    height, width = by_id[victims["malformed_rle"]]["height"], by_id[victims["malformed_rle"]]["width"]
    next(a for a in anns if a["image_id"] == victims["malformed_rle"])["segmentation"] = {
        "size": [height, width], "counts": [5, 7, height * width]}
    annotations = tmp_path / "instances.json"
    annotations.write_text(json.dumps(document))
    return tmp_path, images, annotations, victims


def test_every_bad_image_is_rejected_with_its_reason(damaged):
    root, images, annotations, victims = damaged
    selected = select_images(annotations, images, CLASSES, root / "out", threads=2)
    rejected = pd.read_csv(root / "out" / "rejected.csv").set_index("image_id")["reason"]
    expected = {
        "truncated": "unreadable image: image file is truncated",
        "corrupt": "unreadable image",
        "missing": "missing file",
        "resized": "size mismatch",
        "empty_segmentation": "bad annotation: id .*: empty segmentation",
        "malformed_rle": "bad annotation: id .*: RLE run lengths add up to",
    }
    assert sorted(rejected.index) == sorted(victims.values())
    for kind, pattern in expected.items():
        assert pd.Series([rejected[victims[kind]]]).str.match(pattern).all(), (kind, rejected[victims[kind]])
    assert not set(victims.values()) & set(selected["image_id"])
    expected_count = len(load_index(annotations, CLASSES).candidates()) - len(victims)
    assert len(selected) == expected_count

    counts = build_masks(root / "out" / "instances.json", root / "masks", root / "counts.csv")
    manifest = split_manifest(root / "out" / "selected.csv", [root / "counts.csv"], CLASSES,
                              root / "manifest.csv", root / "splits.csv", FRACTIONS)
    assert len(counts) == len(manifest) == expected_count
    assert not set(victims.values()) & set(manifest["image_id"])


def test_grayscale_and_cmyk_jpegs_are_usable(synthetic, tmp_path):
    selected = select_images(synthetic.annotations, synthetic.images_dir, CLASSES, tmp_path)
    modes = {Image.open(synthetic.images_dir / name).mode for name in selected["file_name"]}
    assert {"L", "CMYK", "RGB"} <= modes


def test_unknown_class_is_a_clear_error_from_the_command_line(synthetic, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cocoseg", "select", "--annotations", str(synthetic.annotations),
         "--images-dir", str(synthetic.images_dir), "--classes", "person", "motorbike",
         "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "error: dataset.classes: 'motorbike' is not a category of" in result.stderr
    assert "Known categories: person, bicycle" in result.stderr
    assert not (tmp_path / "selected.csv").exists()


def test_a_file_that_is_not_coco_is_named(tmp_path):
    bogus = tmp_path / "instances.json"
    bogus.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=f"{bogus}: not a COCO instances file"):
        select_images(bogus, tmp_path, CLASSES, tmp_path / "out")
