"""Image sampling for training: uniform, or class-aware repeat-factor oversampling.

Repeat-factor sampling (Gupta et al., LVIS 2019): with f_c the fraction of training images
that contain class c and t a threshold, class c gets r_c = max(1, sqrt(t / f_c)) and image i
gets r_i = max over its classes of r_c. Each epoch an image appears floor(r_i) times plus once
more with probability r_i - floor(r_i), in a seeded random order.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

SAMPLINGS = ("uniform", "oversample")


def repeat_factors(presence: np.ndarray, threshold: float) -> np.ndarray:
    """r_i per image from a boolean images x classes presence matrix (background excluded)."""
    presence = np.asarray(presence, dtype=bool)
    freq = presence.mean(axis=0)
    class_factor = np.where(freq > 0, np.sqrt(threshold / np.maximum(freq, 1e-12)), 1.0)
    class_factor = np.maximum(1.0, class_factor)
    per_image = np.where(presence, class_factor, 1.0)
    return per_image.max(axis=1) if presence.shape[1] else np.ones(len(presence))


class RepeatFactorSampler(Sampler[int]):
    """Seeded per-epoch sampler; uniform sampling is the case where every factor is 1.

    With ``num_replicas > 1`` each rank takes every num_replicas-th index of the same epoch list
    (cut to a multiple of the ranks), as DistributedSampler with drop_last does, so oversampling survives.

    ``epoch_size`` cuts every epoch's list to that many items (a fixed budget of steps, as LVIS
    fixes iterations): each epoch is a fresh repeat-factor draw in random order, so its first
    ``epoch_size`` items are an unbiased sample of it. With every r_i >= 1 an epoch holds at least
    one item per image, so an epoch_size of at most the number of images is always filled.
    """

    def __init__(self, factors: np.ndarray, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 epoch_size: int | None = None) -> None:
        self.factors = np.asarray(factors, dtype=np.float64)
        self.seed, self.num_replicas, self.rank, self.epoch_size = seed, num_replicas, rank, epoch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_items(self) -> list[tuple[int, int]]:
        """This rank's (position in the whole epoch's order, image index) pairs.

        The positions let augmentation be seeded per sample, alike for every number of ranks.
        """
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        whole = np.floor(self.factors)
        extra = torch.rand(len(self.factors), generator=generator, dtype=torch.float64).numpy()
        counts = (whole + (extra < self.factors - whole)).astype(int)
        indices = np.repeat(np.arange(len(self.factors)), counts)
        order = torch.randperm(len(indices), generator=generator).numpy()
        items = list(enumerate(indices[order].tolist()))[: self.epoch_size]
        if self.num_replicas > 1:
            # Cut to a multiple of the ranks, so that each rank's whole batches make up the
            # single process's whole batches (the tail is dropped either way).
            items = items[: len(items) // self.num_replicas * self.num_replicas][self.rank :: self.num_replicas]
        return items

    def epoch_indices(self) -> list[int]:
        return [index for _, index in self.epoch_items()]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices())

    def __len__(self) -> int:
        return len(self.epoch_indices())
