"""Whether training keeps its data on the GPU: the train split and the val split that moves with it.

``torch.cuda.mem_get_info`` is monkeypatched: the decision is arithmetic on the free memory a GPU reports.
"""

import numpy as np
import pytest
import torch

from cocoseg import batches
from cocoseg.batches import DEVICE_MEMORY_SHARE, LoaderBatches, fits_on_device, train_batches
from cocoseg.cache import CachedSplit
from cocoseg.sampling import RepeatFactorSampler


def split(count: int, size: int = 16) -> CachedSplit:
    return CachedSplit(np.zeros((count, size, size, 3), np.uint8), np.zeros((count, size, size), np.uint8),
                       list(range(count)))


@pytest.fixture
def gpu_with_room_for(monkeypatch):
    """A GPU whose memory share holds ``n`` bytes and one more."""
    def report(n: int) -> None:
        free = int((n + 1) / DEVICE_MEMORY_SHARE) + 1
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    return report


def test_the_val_split_counts_against_the_device_memory(gpu_with_room_for):
    train, val = split(20), split(5)
    train_bytes = train.images.nbytes + train.masks.nbytes
    gpu_with_room_for(train_bytes)
    cuda = torch.device("cuda", 0)
    assert fits_on_device([train], cuda)
    assert not fits_on_device([train, val], cuda)
    gpu_with_room_for(train_bytes + val.images.nbytes + val.masks.nbytes)
    assert fits_on_device([train, val], cuda)
    assert not fits_on_device([train, val], torch.device("cpu"))


def test_auto_falls_back_to_the_loader_when_train_and_val_do_not_fit(gpu_with_room_for, monkeypatch):
    train, val = split(20), split(5)
    gpu_with_room_for(train.images.nbytes + train.masks.nbytes)
    built = []
    monkeypatch.setattr(batches, "DeviceBatches", lambda *args: built.append(args) or built)
    sampler = RepeatFactorSampler(np.ones(len(train.image_ids)), seed=0)
    cuda = torch.device("cuda", 0)
    arguments = (train, sampler, 4, 0.5, 0.25, 10.0, 7, 0, cuda, "auto")
    loader = train_batches(*arguments, val_split=val)
    assert isinstance(loader, LoaderBatches) and not built
    assert (loader.batch_size, loader.num_workers, loader.device, loader.dataset.seed) == (4, 0, cuda, 7)
    assert train_batches(*arguments) is built  # fits without val: the device path, given the run's augmentation
    assert built == [(train, sampler, 4, 0.5, 0.25, 10.0, 7, cuda)]
