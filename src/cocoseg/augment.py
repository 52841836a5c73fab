"""The train augmentations on whole batches of tensors, for data kept on the GPU.

The same steps, in the same order and with the same distributions, as ``datasets.train_transform``
(albumentations): horizontal flip with probability ``hflip``, vertical flip with ``vflip``, a
rotation by an angle drawn uniformly from [-rotate, rotate] degrees about the image centre
(bilinear image with black fill, nearest-neighbour mask with the ignore label as fill), then
ImageNet normalization. Flips and rotation are one affine warp per image, one ``grid_sample`` for
the batch. Masks are sampled with ``mode="nearest"``, so every label in an output mask is a label
of the input mask or the ignore label.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from cocoseg.coco import IGNORE_LABEL
from cocoseg.datasets import IMAGENET_MEAN, IMAGENET_STD


@functools.cache
def _imagenet_statistics(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std on ``device``, made once: a copy from host memory every step would make the host wait."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return mean.to(device), std.to(device)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W raw 0..255 values (uint8 or float) to ImageNet-normalized float32."""
    mean, std = _imagenet_statistics(images.device)
    return (images.float() - mean) / std


def warp_batch(images: torch.Tensor, masks: torch.Tensor, flip_x: torch.Tensor, flip_y: torch.Tensor,
               angles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, then rotate by ``angles`` degrees counter-clockwise (as cv2 and albumentations do).

    ``images``: N x 3 x S x S raw values; ``masks``: N x S x S labels; ``flip_x``/``flip_y``: N booleans.
    Returns float raw images (fill 0) and uint8 masks (fill IGNORE_LABEL). Square images only: the
    normalized coordinates of grid_sample then have the same scale on both axes.
    """
    radians = angles.float() * (math.pi / 180)
    cos, sin = radians.cos(), radians.sin()
    sx = torch.where(flip_x, -1.0, 1.0).to(cos)
    sy = torch.where(flip_y, -1.0, 1.0).to(cos)
    zero = torch.zeros_like(cos)
    # grid_sample maps output to input coordinates: the inverse rotation, then the (self-inverse) flip.
    theta = torch.stack([torch.stack([sx * cos, -sx * sin, zero], 1), torch.stack([sy * sin, sy * cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [images.shape[0], 1, *images.shape[-2:]], align_corners=False)
    warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # Labels shifted by one so that the zero padding marks the outside, which becomes the ignore label.
    shifted = F.grid_sample((masks.float() + 1)[:, None], grid, mode="nearest", padding_mode="zeros",
                            align_corners=False)[:, 0]
    labels = torch.where(shifted == 0, float(IGNORE_LABEL), shifted - 1)
    return warped, labels.to(torch.uint8)


def flip_batch(images: torch.Tensor, masks: torch.Tensor, flip_x: torch.Tensor,
               flip_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips alone: exact copies of pixels, no resampling."""
    images = torch.where(flip_x.view(-1, 1, 1, 1), images.flip(-1), images)
    masks = torch.where(flip_x.view(-1, 1, 1), masks.flip(-1), masks)
    images = torch.where(flip_y.view(-1, 1, 1, 1), images.flip(-2), images)
    masks = torch.where(flip_y.view(-1, 1, 1), masks.flip(-2), masks)
    return images, masks


def augment_batch(images: torch.Tensor, masks: torch.Tensor, hflip: float, vflip: float, rotate: float,
                  generator: torch.Generator, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and rotation, then normalization; the draws come from ``generator`` (on the data's device).

    ``images``: N x 3 x S x S uint8; ``masks``: N x S x S uint8. Returns normalized float32 images and
    int64 masks, as the train step takes them. With several ranks, each holding every
    ``world_size``-th sample of the step's whole batch, the draws for the whole batch are made and
    this rank takes its samples' share: the ranks together augment as one process would.
    """
    draws = torch.rand(images.shape[0] * world_size, 3, generator=generator, device=images.device)[rank::world_size]
    flip_x, flip_y = draws[:, 0] < hflip, draws[:, 1] < vflip
    if rotate:
        raw, masks = warp_batch(images, masks, flip_x, flip_y, (draws[:, 2] * 2 - 1) * rotate)
    else:
        raw, masks = flip_batch(images, masks, flip_x, flip_y)
    return normalize(raw), masks.long()
