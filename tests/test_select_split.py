import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES

from cocoseg.coco import load_index
from cocoseg.data.select import select_images
from cocoseg.data.split import SPLITS, split_sizes, stratified_split


def selected_ids(synthetic, out, **kwargs):
    return select_images(synthetic.annotations, synthetic.images_dir, CLASSES, out, **kwargs)["image_id"].tolist()


def test_max_images_is_an_exact_seeded_sample_not_the_first_n(synthetic, tmp_path):
    candidates = load_index(synthetic.annotations, CLASSES).candidates()
    first = selected_ids(synthetic, tmp_path / "a", max_images=40, seed=1)
    again = selected_ids(synthetic, tmp_path / "b", max_images=40, seed=1)
    other = selected_ids(synthetic, tmp_path / "c", max_images=40, seed=2)
    assert len(first) == 40 and first == sorted(first)
    assert set(first) <= set(candidates)
    assert first == again
    assert first != other
    assert first != candidates[:40]


def test_without_max_images_every_usable_candidate_is_kept(synthetic, tmp_path):
    index = load_index(synthetic.annotations, CLASSES)
    ids = selected_ids(synthetic, tmp_path, max_images=None)
    assert ids == index.candidates()
    no_target = set(index.images) - set(index.candidates())
    assert no_target, "the synthetic data must contain images without a target class"
    manifest = pd.read_csv(tmp_path / "selected.csv")
    assert list(manifest.columns) == ["image_id", "file_name", "width", "height"]


def test_crowd_only_images_are_not_candidates():
    from cocoseg.coco import CocoIndex

    index = CocoIndex(images={1: {}, 2: {}}, class_ids={1: 1},
                      annotations={1: [{"iscrowd": 1}], 2: [{"iscrowd": 1}, {"iscrowd": 0}]})
    assert index.candidates() == [2]


@pytest.mark.parametrize("total", [1, 2, 7, 10, 99, 8000])
def test_split_sizes_follow_the_fractions_within_one_image(total):
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    sizes = split_sizes(total, fractions)
    assert sum(sizes.values()) == total
    for name in SPLITS:
        assert abs(sizes[name] - total * fractions[name]) < 1


def random_presence(n, seed=0):
    rng = np.random.default_rng(seed)
    presence = pd.DataFrame(rng.random((n, 5)) < [0.6, 0.1, 0.3, 0.15, 0.2], columns=CLASSES)
    presence["bicycle"] = presence.index.isin([5, 50, 100])  # exactly 3 images of a rare class
    return presence


def test_split_is_seeded_disjoint_sized_and_stratified():
    presence = random_presence(400)
    splits = stratified_split(presence, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3)
    assert splits.index.equals(presence.index)  # one split per image: disjoint, union is everything
    assert splits.value_counts().to_dict() == {"train": 320, "val": 40, "test": 40}
    assert splits.equals(stratified_split(presence, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=3))
    assert not splits.equals(stratified_split(presence, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=4))
    for name in CLASSES:
        assert set(splits[presence[name]]) == set(SPLITS), name
    assert presence["bicycle"].sum() == 3
    # common classes keep roughly their share in every split
    share = presence.groupby(splits)["person"].mean()
    assert share.max() - share.min() < 0.1


def test_split_keeps_images_without_class_pixels():
    presence = pd.DataFrame(False, index=range(10), columns=CLASSES)
    presence.loc[:4, "person"] = True
    splits = stratified_split(presence, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    assert splits.value_counts().to_dict() == {"train": 6, "val": 2, "test": 2}
