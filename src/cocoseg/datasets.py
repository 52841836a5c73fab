"""Images and label masks, with albumentations transforms: the CPU data path.

Training reads the cache (image and mask already resized to the training size, the mask with
nearest neighbour) and augments; evaluation reads the JPEG, resizes only the image and keeps the
mask at its own resolution, so metrics are computed at the label mask's resolution after the
logits are upsampled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI version check on import

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cocoseg.coco import IGNORE_LABEL
from cocoseg.io import read_mask, read_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(hflip: float, vflip: float, rotate: float) -> A.Compose:
    """Flips, rotation (ignore label as the mask's fill), normalization; for already resized images."""
    steps: list[Any] = []
    if hflip:
        steps.append(A.HorizontalFlip(p=hflip))
    if vflip:
        steps.append(A.VerticalFlip(p=vflip))
    if rotate:
        steps.append(A.Rotate(limit=rotate, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                              border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_LABEL, p=1.0))
    steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return A.Compose(steps)


def eval_transform(image_size: int) -> A.Compose:
    """Resize and normalize the image only: the mask keeps its own resolution."""
    return A.Compose([A.Resize(image_size, image_size, interpolation=cv2.INTER_LINEAR),
                      A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])


class SegmentationDataset(Dataset):
    """Evaluation rows of the manifest: image from ``image_path`` (resized), mask from ``run_dir / mask_path``."""

    def __init__(self, manifest: pd.DataFrame, run_dir: str | Path, transform: A.Compose) -> None:
        self.rows = manifest.reset_index(drop=True)
        self.run_dir = Path(run_dir)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows.iloc[index]
        image = self.transform(image=read_rgb(row["image_path"]))["image"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "mask": torch.from_numpy(read_mask(self.run_dir / row["mask_path"])),
            "image_id": int(row["image_id"]),
        }


class CachedTrainDataset(Dataset):
    """Cached training arrays, augmented by albumentations; items are (epoch position, image index).

    Each item's augmentation is seeded by (seed, epoch, position in the epoch's order), so it is
    the same whichever worker, rank or resumed run draws it.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, transform: A.Compose, seed: int) -> None:
        self.images, self.masks, self.transform, self.seed = images, masks, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        position, index = item
        entropy = np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0]
        self.transform.set_random_seed(int(entropy))
        out = self.transform(image=np.array(self.images[index]), mask=np.array(self.masks[index]))  # copies
        return {"image": torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1))),
                "mask": torch.from_numpy(np.ascontiguousarray(out["mask"])).long()}


def collate_eval(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Images stacked (all resized alike); masks kept as a list, each at its own size."""
    return {"image": torch.stack([b["image"] for b in batch]), "mask": [b["mask"] for b in batch],
            "image_id": [b["image_id"] for b in batch]}
