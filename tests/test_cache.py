"""The training cache, and the two batch sources that read it (albumentations workers, the device)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cocoseg.batches import DeviceBatches, LoaderBatches
from cocoseg.cache import StaleCacheError, build_cache, ensure_cache, load_split, resize_mask
from cocoseg.datasets import eval_transform, read_mask, read_rgb
from cocoseg.sampling import RepeatFactorSampler
from cocoseg.train import TrainSettings, scaled_lr

SIZE = 40


@pytest.fixture(scope="module")
def cache_dir(run_dir):
    cache = run_dir / "cache" / "test"
    build_cache(run_dir / "data" / "manifest.csv", run_dir, cache, SIZE, threads=2)
    return cache


def test_cache_holds_each_split_resized_as_evaluation_resizes(run_dir, cache_dir):
    manifest = pd.read_csv(run_dir / "data" / "manifest.csv")
    for split in ("train", "val"):
        cached = load_split(cache_dir, split, run_dir / "data" / "manifest.csv", SIZE)
        rows = manifest[manifest["split"] == split]
        assert cached.image_ids == rows["image_id"].tolist()
        assert cached.images.shape == (len(rows), SIZE, SIZE, 3) and cached.images.dtype == np.uint8
        for i, row in enumerate(rows.itertuples()):
            resized = eval_transform(SIZE).transforms[0](image=read_rgb(row.image_path))["image"]
            np.testing.assert_array_equal(cached.images[i], resized)
            mask = read_mask(run_dir / row.mask_path)
            # nearest-exact, as torch defines it independently of cv2: centres aligned with the image's
            expected = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=(SIZE, SIZE),
                                                       mode="nearest-exact")[0, 0].byte().numpy()
            np.testing.assert_array_equal(cached.masks[i], expected)


def test_mask_resize_samples_the_source_pixel_under_each_centre():
    # 640 -> 256: s = 2.5; output pixel x takes source pixel floor((x + 0.5) * 2.5): 1, 3, 6, 8, 11, ...
    mask = np.tile(np.arange(640, dtype=np.int64) % 251, (4, 1)).astype(np.uint8)
    resized = resize_mask(np.repeat(mask, 160, axis=0)[:640], 256)
    columns = np.floor((np.arange(256) + 0.5) * 2.5).astype(int)
    np.testing.assert_array_equal(resized[0], (columns % 251).astype(np.uint8))


def test_a_cache_of_another_size_or_manifest_is_refused_and_rebuilt(run_dir, cache_dir, tmp_path):
    manifest = run_dir / "data" / "manifest.csv"
    with pytest.raises(StaleCacheError, match=r"holds 40 px images, not 32 px; rebuild it: python -m cocoseg cache"):
        load_split(cache_dir, "train", manifest, 32)
    changed = tmp_path / "manifest.csv"
    frame = pd.read_csv(manifest)
    frame.loc[frame.index[0], "split"] = "val" if frame.loc[frame.index[0], "split"] == "train" else "train"
    frame.to_csv(changed, index=False)
    with pytest.raises(StaleCacheError, match="built from another version of"):
        load_split(cache_dir, "train", changed, SIZE)
    copy = tmp_path / "cache"
    build_cache(manifest, run_dir, copy, SIZE)
    ensure_cache(changed, run_dir, copy, SIZE)  # rebuilds for the changed manifest
    assert json.loads((copy / "cache.json").read_text())["splits"]["val"] == \
        frame.loc[frame["split"] == "val", "image_id"].tolist()


def test_a_build_that_fails_part_way_leaves_no_cache_file(run_dir, cache_dir, tmp_path, monkeypatch):
    """All or nothing, and the temporary files a killed build left are removed by the next."""
    import cocoseg.cache as cache_module

    manifest, target = run_dir / "data" / "manifest.csv", tmp_path / "cache"
    target.mkdir()
    (target / ".train_images.npy.killed.tmp").write_bytes(b"left by a SIGKILL")
    fill = cache_module._fill

    def fill_then_fail(rows, *args):
        fill(rows, *args)
        if args[-1].startswith("cache val"):
            raise MemoryError("killed while caching val")

    monkeypatch.setattr(cache_module, "_fill", fill_then_fail)
    with pytest.raises(MemoryError):
        build_cache(manifest, run_dir, target, SIZE)
    assert list(target.iterdir()) == []  # the train split was written, but never renamed into place
    monkeypatch.setattr(cache_module, "_fill", fill)
    build_cache(manifest, run_dir, target, SIZE)
    assert {path.name: path.read_bytes() for path in target.iterdir()} == \
        {path.name: path.read_bytes() for path in cache_dir.iterdir()}


def _sources(run_dir, cache_dir, factors, batch_size, **augment):
    split = load_split(cache_dir, "train", run_dir / "data" / "manifest.csv", SIZE)
    loader = LoaderBatches(split, RepeatFactorSampler(factors, seed=1), batch_size, seed=0, num_workers=0,
                           device=torch.device("cpu"), **augment)
    device = DeviceBatches(split, RepeatFactorSampler(factors, seed=1), batch_size, seed=0,
                           device=torch.device("cpu"), **augment)
    return split, loader, device


@pytest.mark.parametrize("source", ["loader", "device"])
def test_both_batch_sources_follow_the_oversampling_order(run_dir, cache_dir, source):
    factors = np.where(np.arange(18) % 3 == 0, 2.6, 1.0)  # every third image is oversampled
    split, loader, device = _sources(run_dir, cache_dir, factors, 4, hflip=0.0, vflip=0.0, rotate=0.0)
    batches = {"loader": loader, "device": device}[source]
    sampler = RepeatFactorSampler(factors, seed=1)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        order = sampler.epoch_indices()
        masks = torch.cat([m for _, m in batches.epoch(epoch)])
        assert len(masks) == len(order) // 4 * 4 == batches.steps(epoch) * 4
        expected = torch.from_numpy(np.array(split.masks))[order[: len(masks)]].long()
        assert torch.equal(masks, expected)
    assert len(order) > 18  # images were repeated


@pytest.mark.parametrize("source", ["loader", "device"])
def test_an_epoch_resumed_mid_way_gives_the_same_batches(run_dir, cache_dir, source):
    _, loader, device = _sources(run_dir, cache_dir, np.ones(18), 4, hflip=0.5, vflip=0.5, rotate=20.0)
    batches = {"loader": loader, "device": device}[source]
    whole = list(batches.epoch(3))
    resumed = list(batches.epoch(3, start_step=2))
    assert len(resumed) == len(whole) - 2
    for (a_images, a_masks), (b_images, b_masks) in zip(whole[2:], resumed):
        assert torch.equal(a_images, b_images) and torch.equal(a_masks, b_masks)


def test_ranks_together_take_the_single_process_batch_of_each_step():
    factors = np.where(np.arange(50) % 4 == 0, 3.0, 1.0)
    single = RepeatFactorSampler(factors, seed=2).epoch_items()
    ranks = [RepeatFactorSampler(factors, seed=2, num_replicas=2, rank=r).epoch_items() for r in (0, 1)]
    batch, per_rank = 8, 4
    for step in range(len(single) // batch):
        together = ranks[0][step * per_rank : (step + 1) * per_rank] + ranks[1][step * per_rank : (step + 1) * per_rank]
        assert sorted(together) == sorted(single[step * batch : (step + 1) * batch])


@pytest.mark.parametrize("rule,batch,expected", [("sqrt", 16, 2e-4), ("linear", 16, 4e-4), ("none", 16, 1e-4),
                                                 ("sqrt", 4, 1e-4), ("sqrt", 1, 5e-5)])
def test_learning_rate_follows_the_batch_size(rule, batch, expected):
    settings = TrainSettings("resnet50", "cross_entropy", "uniform", batch_size=batch, lr=1e-4, base_batch_size=4,
                             lr_scaling=rule)
    assert scaled_lr(settings) == pytest.approx(expected)



@pytest.mark.parametrize("source", [LoaderBatches, DeviceBatches])
def test_two_ranks_together_augment_as_one_process(run_dir, cache_dir, source):
    """Rank r holds every 2nd sample of the step's whole batch, and the same flips and rotation as one process."""
    split = load_split(cache_dir, "train", run_dir / "data" / "manifest.csv", SIZE)
    factors = np.where(np.arange(18) % 3 == 0, 2.6, 1.0)
    augment = dict(hflip=0.5, vflip=0.5, rotate=20.0, seed=0, device=torch.device("cpu"))
    if source is LoaderBatches:
        augment["num_workers"] = 0

    def batches(batch_size, **ranks):
        return list(source(split, RepeatFactorSampler(factors, seed=1, **ranks), batch_size, **augment).epoch(1))

    single = batches(4)
    ranks = [batches(2, num_replicas=2, rank=r) for r in (0, 1)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) > 0
    for step, (images, masks) in enumerate(single):
        for r in (0, 1):
            torch.testing.assert_close(ranks[r][step][0], images[r::2], rtol=0, atol=0)
            torch.testing.assert_close(ranks[r][step][1], masks[r::2], rtol=0, atol=0)
