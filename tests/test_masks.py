"""Masks against an independent reference: pycocotools' own COCO.annToMask, painted by the contract's rule."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES
from PIL import Image
from pycocotools.coco import COCO

from cocoseg.data.masks import build_masks, render_mask
from cocoseg.data.select import select_images


def reference_mask(coco: COCO, image_id: int, crowd: str) -> np.ndarray:
    """The contract's mask, built with annToMask and no code of the project."""
    info = coco.imgs[image_id]
    label_of = {coco.getCatIds(catNms=[name])[0]: label for label, name in enumerate(CLASSES, start=1)}
    anns = [a for a in coco.imgToAnns[image_id] if a["category_id"] in label_of]
    painted = [a for a in anns if not a["iscrowd"] or crowd == "label"]
    decoded = {a["id"]: coco.annToMask(a).astype(bool) for a in anns}
    mask = np.zeros((info["height"], info["width"]), dtype=np.uint8)
    for ann in sorted(painted, key=lambda a: (-int(decoded[a["id"]].sum()), a["id"])):
        mask[decoded[ann["id"]]] = label_of[ann["category_id"]]
    if crowd == "ignore":
        for ann in (a for a in anns if a["iscrowd"]):
            mask[decoded[ann["id"]] & (mask == 0)] = 255
    return mask


@pytest.fixture(scope="module")
def coco(synthetic):
    return COCO(str(synthetic.annotations))


@pytest.fixture(scope="module")
def selection(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("selection")
    select_images(synthetic.annotations, synthetic.images_dir, CLASSES, out, crowd="label")
    return out


@pytest.mark.parametrize("crowd", ["ignore", "label", "background"])
def test_masks_match_the_pycocotools_reference(coco, selection, tmp_path, crowd):
    frames = [build_masks(selection / "instances.json", tmp_path / "masks", tmp_path / f"counts-{shard}.csv",
                          crowd, shard, 3) for shard in range(3)]
    counts = pd.concat(frames).set_index("image_id")
    selected = pd.read_csv(selection / "selected.csv")["image_id"].tolist()
    assert sorted(counts.index) == selected
    crowded = [i for i in selected if any(a["iscrowd"] for a in coco.imgToAnns[i])]
    overlapping = 0
    for image_id in selected:
        with Image.open(tmp_path / "masks" / f"{image_id}.png") as image:
            assert image.mode in ("L", "P")
            assert image.size == (coco.imgs[image_id]["width"], coco.imgs[image_id]["height"])
            ours = np.array(image)
        expected = reference_mask(coco, image_id, crowd)
        np.testing.assert_array_equal(ours, expected, err_msg=f"image {image_id}, crowd={crowd}")
        hist = np.bincount(expected.ravel(), minlength=256)
        assert counts.loc[image_id, "pixels_background"] == hist[0]
        assert counts.loc[image_id, "pixels_ignore"] == hist[255]
        for label, name in enumerate(CLASSES, start=1):
            assert counts.loc[image_id, f"pixels_{name}"] == hist[label]
        overlapping += len(np.unique(expected)) > 2
    assert crowded, "the synthetic data must contain crowd regions"
    assert overlapping > 10, "the synthetic data must contain several classes per image"
    ignored = counts.loc[crowded, "pixels_ignore"].sum()
    assert (ignored > 0) if crowd == "ignore" else (ignored == 0)


def square(x0, y0, size):
    return [[x0, y0, x0 + size, y0, x0 + size, y0 + size, x0, y0 + size]]


def ann(ann_id, category, segmentation, iscrowd=0):
    return {"id": ann_id, "category_id": category, "segmentation": segmentation, "iscrowd": iscrowd}


LABELS = {1: 1, 2: 2, 3: 3}


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_smaller_instance_lies_on_top_whatever_the_annotation_order(order):
    big, small = ann(1, 1, square(0, 0, 10)), ann(2, 2, square(3, 3, 4))
    mask = render_mask([[big, small][i] for i in order], LABELS, 12, 12)
    assert mask[5, 5] == 2  # inside the small one
    assert mask[1, 1] == 1  # only the big one
    assert mask[11, 11] == 0


def test_equal_areas_are_painted_by_ascending_annotation_id():
    first, second = ann(7, 1, square(0, 0, 6)), ann(3, 2, square(3, 3, 6))
    mask = render_mask([first, second], LABELS, 12, 12)
    assert mask[4, 4] == 1  # id 7 painted after id 3
    mask = render_mask([ann(3, 1, square(0, 0, 6)), ann(7, 2, square(3, 3, 6))], LABELS, 12, 12)
    assert mask[4, 4] == 2


def test_larger_later_annotation_does_not_cover_a_smaller_one():
    """The seed's rule (later or higher class wins) would give 3 here."""
    small, large = ann(1, 1, square(2, 2, 3)), ann(2, 3, square(0, 0, 10))
    assert render_mask([small, large], LABELS, 12, 12)[3, 3] == 1


def rle(mask):
    from pycocotools import mask as mask_utils

    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": encoded["size"], "counts": encoded["counts"].decode()}


@pytest.mark.parametrize("policy, inside_instance, crowd_only", [
    ("ignore", 2, 255), ("label", 2, 1), ("background", 2, 0),
])
def test_crowd_policies(policy, inside_instance, crowd_only):
    region = np.zeros((12, 12), dtype=bool)
    region[0:8, 0:8] = True
    crowd = ann(1, 1, rle(region), iscrowd=1)
    instance = ann(2, 2, square(4, 4, 3))
    mask = render_mask([crowd, instance], LABELS, 12, 12, policy)
    assert mask[5, 5] == inside_instance
    assert mask[1, 1] == crowd_only
    assert mask[10, 10] == 0


def test_instances_file_keeps_only_target_classes(selection):
    instances = json.loads((selection / "instances.json").read_text())
    assert instances["classes"] == CLASSES
    assert {c["name"] for c in instances["categories"]} == set(CLASSES)
    kept = {c["id"] for c in instances["categories"]}
    assert all(a["category_id"] in kept for a in instances["annotations"])


def test_a_shard_folder_appears_only_complete(selection, tmp_path, monkeypatch):
    """A shard killed part way leaves only its work in progress; the next run removes it and matches."""
    import cocoseg.data.masks as masks_module

    reference = build_masks(selection / "instances.json", tmp_path / "ref" / "0", tmp_path / "ref.csv")
    save, calls = masks_module.save_mask, []

    def save_then_die(*args, **kwargs):
        save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(masks_module, "save_mask", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_masks(selection / "instances.json", tmp_path / "masks" / "0", tmp_path / "counts.csv")
    assert not (tmp_path / "masks" / "0").exists() and not (tmp_path / "counts.csv").exists()
    assert len(list((tmp_path / "masks" / ".0.0.partial").glob("*.png"))) == 3
    monkeypatch.setattr(masks_module, "save_mask", save)
    counts = build_masks(selection / "instances.json", tmp_path / "masks" / "0", tmp_path / "counts.csv")
    assert [p.name for p in (tmp_path / "masks").iterdir()] == ["0"]  # the leftover is gone
    pd.testing.assert_frame_equal(counts, reference)
    for path in (tmp_path / "ref" / "0").iterdir():
        assert (tmp_path / "masks" / "0" / path.name).read_bytes() == path.read_bytes()
