"""Where training batches come from: albumentations in DataLoader workers, or the GPU itself.

Both read the cache and yield (normalized float32 images N x 3 x S x S, int64 masks N x S x S) on
the training device, for the same epoch order of the sampler (oversampling included), from any
step of an epoch (a resumed run). ``DeviceBatches`` keeps the whole split on the device as uint8
and augments a batch at a time there (``augment.augment_batch``); ``LoaderBatches`` is the
CPU path, one albumentations call per image in worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from cocoseg.augment import augment_batch, normalize
from cocoseg.cache import CachedSplit
from cocoseg.datasets import CachedTrainDataset, train_transform
from cocoseg.lifecycle import loader_workers, started_workers
from cocoseg.sampling import RepeatFactorSampler

Batch = tuple[torch.Tensor, torch.Tensor]
# Use at most this share of the free GPU memory for a resident split; the rest is the model's.
DEVICE_MEMORY_SHARE = 0.4


def fits_on_device(splits: Sequence[CachedSplit], device: torch.device) -> bool:
    """Whether ``splits`` (the train split and the val split that moves with it) fit in the memory share."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return sum(split.images.nbytes + split.masks.nbytes for split in splits) < DEVICE_MEMORY_SHARE * free


def step_seed(seed: int, epoch: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0])


class _EpochBatches:
    """Whole batches of the sampler's epoch order."""

    def __init__(self, sampler: RepeatFactorSampler, batch_size: int, device: torch.device) -> None:
        self.sampler, self.batch_size, self.device = sampler, batch_size, device

    def steps(self, epoch: int) -> int:
        self.sampler.set_epoch(epoch)
        return len(self.sampler.epoch_items()) // self.batch_size


class LoaderBatches(_EpochBatches):
    def __init__(self, split: CachedSplit, sampler: RepeatFactorSampler, batch_size: int, hflip: float,
                 vflip: float, rotate: float, seed: int, num_workers: int, device: torch.device) -> None:
        super().__init__(sampler, batch_size, device)
        self.dataset = CachedTrainDataset(split.images, split.masks, train_transform(hflip, vflip, rotate), seed)
        self.num_workers = num_workers

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch)
        self.dataset.epoch = epoch
        items = self.sampler.epoch_items()[start_step * self.batch_size :]
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=items, drop_last=True,
                            pin_memory=self.device.type == "cuda", **loader_workers(self.num_workers),
                            generator=torch.Generator())  # its own: the global RNG (dropout) is left alone
        for batch in started_workers(loader):
            yield (batch["image"].to(self.device, non_blocking=True),
                   batch["mask"].to(self.device, non_blocking=True))


class DeviceBatches(_EpochBatches):
    def __init__(self, split: CachedSplit, sampler: RepeatFactorSampler, batch_size: int, hflip: float,
                 vflip: float, rotate: float, seed: int, device: torch.device) -> None:
        super().__init__(sampler, batch_size, device)
        # N x S x S x 3 on the device; a batch permuted to N x 3 x S x S is already channels-last.
        self.images, self.masks = as_tensors(split, device)
        self.hflip, self.vflip, self.rotate, self.seed = hflip, vflip, rotate, seed

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        self.sampler.set_epoch(epoch)
        order = torch.tensor(self.sampler.epoch_indices(), device=self.device)  # one copy an epoch
        generator = torch.Generator(device=self.device)
        for step in range(start_step, len(order) // self.batch_size):
            index = order[step * self.batch_size : (step + 1) * self.batch_size]
            generator.manual_seed(step_seed(self.seed, epoch, step))  # host-side: no synchronisation
            yield augment_batch(self.images[index].permute(0, 3, 1, 2), self.masks[index], self.hflip, self.vflip,
                                self.rotate, generator, self.sampler.rank, self.sampler.num_replicas)


def train_batches(split: CachedSplit, sampler: RepeatFactorSampler, batch_size: int, hflip: float, vflip: float,
                  rotate: float, seed: int, num_workers: int, device: torch.device,
                  data_on_device: str, val_split: CachedSplit | None = None) -> LoaderBatches | DeviceBatches:
    """``data_on_device``: ``auto`` (on a CUDA device when the split fits, with ``val_split``, which then
    moves there too), ``always`` or ``never``."""
    resident = [split] if val_split is None else [split, val_split]
    if data_on_device == "always" or (data_on_device == "auto" and fits_on_device(resident, device)):
        return DeviceBatches(split, sampler, batch_size, hflip, vflip, rotate, seed, device)
    return LoaderBatches(split, sampler, batch_size, hflip, vflip, rotate, seed, num_workers, device)


def as_tensors(split: CachedSplit, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A cached split read into memory as N x S x S x 3 images and N x S x S masks (uint8) on ``device``."""
    return torch.from_numpy(np.array(split.images)).to(device), torch.from_numpy(np.array(split.masks)).to(device)


def eval_batches(images: torch.Tensor, masks: torch.Tensor, batch_size: int, device: torch.device, rank: int = 0,
                 world_size: int = 1) -> Iterator[Batch]:
    """Normalized images and their masks in order, on ``device``; with several ranks, this rank's share."""
    images, masks = images[rank::world_size], masks[rank::world_size]
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size].to(device, non_blocking=True)
        labels = masks[start : start + batch_size].to(device, non_blocking=True)
        yield normalize(chunk.permute(0, 3, 1, 2)), labels.long()
