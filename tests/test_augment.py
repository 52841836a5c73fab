"""The batched tensor augmentations against albumentations, on the CPU.

The GPU path (``augment.augment_batch``) must do what ``datasets.train_transform`` does: for fixed
parameters the same masks pixel for pixel, and for random parameters the same label statistics.
"""

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from cocoseg.augment import augment_batch, normalize, warp_batch
from cocoseg.coco import IGNORE_LABEL
from cocoseg.datasets import IMAGENET_MEAN, IMAGENET_STD, train_transform

SIZE = 64


def scenes(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random images and masks of rectangles of labels 1..5 (and some ignore) on background."""
    rng = np.random.default_rng(seed)
    images = np.stack([cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), (7, 7), 3)
                       for _ in range(count)])
    masks = np.zeros((count, SIZE, SIZE), dtype=np.uint8)
    for mask in masks:
        for _ in range(4):
            y, x = rng.integers(0, SIZE - 8, 2)
            h, w = rng.integers(4, SIZE // 2, 2)
            mask[y : y + h, x : x + w] = rng.choice([1, 2, 3, 4, 5, IGNORE_LABEL], p=[0.3, 0.2, 0.2, 0.1, 0.1, 0.1])
    return images, masks


def as_batch(images: np.ndarray, masks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(masks)


def albumentations_fixed(image, mask, angle, flip_x, flip_y):
    steps = [A.HorizontalFlip(p=1)] if flip_x else []
    steps += [A.VerticalFlip(p=1)] if flip_y else []
    steps.append(A.Rotate(limit=(angle, angle), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                          border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=IGNORE_LABEL, p=1))
    return A.Compose(steps)(image=image, mask=mask)


@pytest.mark.parametrize("angle", [7.5, -15.0, 33.0, 90.0])
@pytest.mark.parametrize("flip_x,flip_y", [(False, False), (True, False), (True, True)])
def test_fixed_warp_matches_albumentations(angle, flip_x, flip_y):
    images, masks = scenes(4)
    n = len(images)
    warped, labels = warp_batch(*as_batch(images, masks), torch.full((n,), flip_x), torch.full((n,), flip_y),
                                torch.full((n,), angle))
    for i in range(n):
        expected = albumentations_fixed(images[i], masks[i], angle, flip_x, flip_y)
        np.testing.assert_array_equal(labels[i].numpy(), expected["mask"])
        # cv2 interpolates in 8-bit fixed point: within one grey level on average
        assert np.abs(warped[i].permute(1, 2, 0).numpy() - expected["image"]).mean() < 1.0


def test_normalize_matches_albumentations():
    images, _ = scenes(2)
    expected = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)(image=images[0])["image"]
    ours = normalize(as_batch(images, images[..., 0])[0])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def label_fractions(masks: np.ndarray) -> np.ndarray:
    labels = [0, 1, 2, 3, 4, 5, IGNORE_LABEL]
    return np.array([(masks == label).mean() for label in labels])


def test_random_augmentations_have_the_label_statistics_of_albumentations():
    images, masks = scenes(32, seed=1)
    hflip, vflip, rotate, repeats = 0.5, 0.5, 30.0, 12
    transform = train_transform(hflip, vflip, rotate)
    transform.set_random_seed(0)
    ours, theirs = [], []
    generator = torch.Generator().manual_seed(0)
    for _ in range(repeats):
        _, labels = augment_batch(*as_batch(images, masks), hflip, vflip, rotate, generator)
        ours.append(labels.numpy())
        theirs.append(np.stack([transform(image=im, mask=m)["mask"] for im, m in zip(images, masks)]))
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    # no interpolated labels: only labels of the input, and the ignore label as fill
    assert set(np.unique(ours)) <= set(np.unique(masks)) | {IGNORE_LABEL}
    # 384 draws each: label fractions agree to within half a percentage point
    np.testing.assert_allclose(label_fractions(ours), label_fractions(theirs), atol=0.005)
    # the rotation's fill: the corners outside the rotated square, about 12% of pixels at 30 degrees
    fill_ours = (ours == IGNORE_LABEL).mean() - (masks == IGNORE_LABEL).mean()
    fill_theirs = (theirs == IGNORE_LABEL).mean() - (masks == IGNORE_LABEL).mean()
    assert fill_ours > 0.05 and abs(fill_ours - fill_theirs) < 0.005
    # flips happen half the time on each axis: the left half's share of label 1 moves to the right
    assert abs((ours[..., : SIZE // 2] == 1).mean() - (ours[..., SIZE // 2 :] == 1).mean()) < 0.01


def test_flips_alone_move_pixels_exactly():
    images, masks = scenes(8)
    out, labels = augment_batch(*as_batch(images, masks), 1.0, 0.0, 0.0, torch.Generator().manual_seed(0))
    flipped = A.Compose([A.HorizontalFlip(p=1), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    for i in range(len(images)):
        expected = flipped(image=images[i], mask=masks[i])
        np.testing.assert_array_equal(labels[i].numpy(), expected["mask"])
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), expected["image"], atol=1e-5)


def test_augmentation_is_a_function_of_the_generator_seed():
    images, masks = as_batch(*scenes(4))
    first = augment_batch(images, masks, 0.5, 0.5, 20.0, torch.Generator().manual_seed(3))
    again = augment_batch(images, masks, 0.5, 0.5, 20.0, torch.Generator().manual_seed(3))
    other = augment_batch(images, masks, 0.5, 0.5, 20.0, torch.Generator().manual_seed(4))
    assert torch.equal(first[1], again[1]) and torch.equal(first[0], again[0])
    assert not torch.equal(first[1], other[1])
