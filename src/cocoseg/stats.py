"""How sure a result is: bootstrap intervals, paired comparisons and Holm's adjustment.

Everything comes from per-image confusion matrices (rows truth, columns prediction). A
configuration (backbone-loss-sampling) trained with S seeds has S x N matrices for the N test
images; its test mIoU is the mean over seeds of each seed's mIoU on the whole split.

A bootstrap replicate draws the N test images with replacement and, with several seeds, the S
seeds with replacement too (a two-level bootstrap: the spread of test images and of training
runs). With one seed the seed draw is always that seed, so the replicate is exactly the image
bootstrap. Every configuration sees the same image draws, and configurations with equally many
seeds the same seed draws, so differences between configurations are paired.

What the intervals cover: which test images were drawn, and (with several seeds) which training
runs; not the choice of hyper-parameters, nor the dataset itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU per class of confusion matrices (..., C, C) -> (..., C); NaN where a class is neither true nor predicted."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(-1) + confusion.sum(-2) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def nanmean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over the finite values along ``axis``; NaN where there are none (without numpy's warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def draw_image_counts(rng: np.random.Generator, resamples: int, images: int) -> np.ndarray:
    """How often each image is drawn in each replicate: ``resamples`` x ``images``, rows summing to ``images``."""
    return rng.multinomial(images, np.full(images, 1 / images), size=resamples)


def seed_counts(uniform: np.ndarray, seeds: int) -> np.ndarray:
    """How often each of ``seeds`` runs is drawn per replicate, from uniforms (B x at least ``seeds``)."""
    drawn = np.floor(uniform[:, :seeds] * seeds).astype(int)
    return (drawn[:, :, None] == np.arange(seeds)).sum(axis=1)


@dataclass
class Estimate:
    """Point values (over all images, mean over seeds) and their bootstrap replicates."""

    miou: float
    miou_objects: float
    iou: np.ndarray  # C
    miou_replicates: np.ndarray  # B
    miou_objects_replicates: np.ndarray  # B
    iou_replicates: np.ndarray  # B x C


def _seed_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean over seeds (axis 1) of B x S (x C) values, NaNs left out."""
    if values.ndim == 3:
        weights = weights[:, :, None]
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0) * weights
    with np.errstate(divide="ignore", invalid="ignore"):
        return total.sum(axis=1) / np.where(finite, weights, 0).sum(axis=1)


def _metrics(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    iou = iou_per_class(confusion)
    return nanmean(iou), nanmean(iou[..., 1:]), iou


def estimate(confusions: np.ndarray, image_counts: np.ndarray, seed_draws: np.ndarray) -> Estimate:
    """One configuration's estimate from its S x N x C x C confusions and the replicates' draws.

    ``image_counts`` is B x N (``draw_image_counts``), ``seed_draws`` B x S (``seed_counts``).
    """
    seeds, images, classes, _ = confusions.shape
    flat = confusions.reshape(seeds, images, classes * classes).astype(np.float64)
    whole = flat.sum(axis=1).reshape(seeds, classes, classes)
    miou, miou_objects, iou = _metrics(whole)
    # One matrix product: every replicate's image counts times every seed's per-image matrices.
    resampled = image_counts.astype(np.float64) @ flat.transpose(1, 0, 2).reshape(images, -1)
    r_miou, r_objects, r_iou = _metrics(resampled.reshape(len(image_counts), seeds, classes, classes))
    return Estimate(float(nanmean(miou, 0)), float(nanmean(miou_objects, 0)), nanmean(iou, 0),
                    _seed_mean(r_miou, seed_draws), _seed_mean(r_objects, seed_draws), _seed_mean(r_iou, seed_draws))


def percentile_interval(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval over axis 0, NaN replicates left out."""
    tail = (1 - confidence) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(replicates, [tail, 100 - tail], axis=0)
    return low, high


def bootstrap_p_value(differences: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value of "no difference", over axis 0: twice the smaller tail at zero.

    With the add-one correction (Davison & Hinkley 1997), so no p-value is 0 from finitely many
    replicates; a difference that is 0 in every replicate gets 1. NaN replicates are left out.
    """
    finite = np.isfinite(differences)
    count = finite.sum(axis=0)
    below = ((differences <= 0) & finite).sum(axis=0)
    above = ((differences >= 0) & finite).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * np.minimum(below + 1, above + 1) / (count + 1)
    return np.where(count > 0, np.minimum(p, 1.0), np.nan)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values; NaNs stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted


def bootstrap(confusions: dict[str, np.ndarray], resamples: int = 2000, seed: int = 0) -> dict[str, Estimate]:
    """Estimates of every configuration (name -> S x N x C x C) from shared, seeded draws.

    The images are drawn first, then one uniform per replicate and seed position, so that the
    image draws do not depend on the number of seeds.
    """
    images = {c.shape[1] for c in confusions.values()}
    if len(images) != 1:
        raise ValueError(f"the configurations were evaluated on different numbers of test images: {sorted(images)}")
    rng = np.random.default_rng(seed)
    image_counts = draw_image_counts(rng, resamples, images.pop())
    uniform = rng.random((resamples, max(c.shape[0] for c in confusions.values())))
    return {name: estimate(c, image_counts, seed_counts(uniform, c.shape[0])) for name, c in confusions.items()}
