"""Segmentation losses, all ignoring the label 255."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cocoseg.coco import IGNORE_LABEL
from cocoseg.config import schema_default

LOSSES = ("cross_entropy", "weighted_cross_entropy", "focal_tversky")
WEIGHT_SCHEMES = ("inverse_sqrt", "median_frequency", "inverse")
FOCAL_TVERSKY = schema_default("loss.focal_tversky")  # alpha, beta, gamma, smooth


def class_weights(image_pixels: np.ndarray, scheme: str = schema_default("loss.class_weights")) -> np.ndarray:
    """Per-class weights from the train split's pixel counts, scaled to a pixel-weighted mean of 1.

    ``image_pixels`` is images x classes (background first): each image's labelled pixels of each
    class. With f_c the class's share of all labelled pixels, inverse_sqrt: w_c = 1/sqrt(f_c);
    inverse: w_c = 1/f_c. median_frequency, as Eigen & Fergus (2015) define it: w_c = median(g)/g_c
    with g_c = pixels of c / pixels of the images that contain c. A class without pixels gets the
    largest weight of the others.
    """
    image_pixels = np.atleast_2d(np.asarray(image_pixels, dtype=np.float64))
    counts = image_pixels.sum(axis=0)
    freq = counts / counts.sum()
    present = freq > 0
    weights = np.zeros_like(freq)
    if scheme == "inverse_sqrt":
        weights[present] = 1 / np.sqrt(freq[present])
    elif scheme == "inverse":
        weights[present] = 1 / freq[present]
    elif scheme == "median_frequency":
        containing = (image_pixels > 0) * image_pixels.sum(axis=1, keepdims=True)
        image_freq = counts[present] / containing.sum(axis=0)[present]
        weights[present] = np.median(image_freq) / image_freq
    else:
        raise ValueError(f"unknown class weight scheme {scheme!r}; use one of {WEIGHT_SCHEMES}")
    weights[~present] = weights[present].max()
    return weights / (weights * freq).sum()


class CrossEntropy(nn.Module):
    """L = -sum_i w_{y_i} log p_{i,y_i} / sum_i w_{y_i} over pixels i with y_i != 255 (w = 1 if unweighted)."""

    def __init__(self, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target.long(), weight=self.weight, ignore_index=IGNORE_LABEL)


class FocalTversky(nn.Module):
    """Focal Tversky loss (Abraham & Khan 2019), over the batch and pixels with y != 255.

    With p the softmax and g the one-hot target of class c:
    TP_c = sum p g, FP_c = sum p (1-g), FN_c = sum (1-p) g,
    TI_c = (TP_c + s) / (TP_c + alpha FP_c + beta FN_c + s),  L = mean_c (1 - TI_c)^gamma.
    alpha weighs false positives, beta false negatives: beta > alpha penalises missed pixels more than
    false alarms. gamma is the exponent applied to (1 - TI): 0.75 is Abraham & Khan's 1/gamma with
    their gamma = 4/3; below 1 it focuses on the poorly segmented classes.
    """

    def __init__(self, alpha: float = FOCAL_TVERSKY["alpha"], beta: float = FOCAL_TVERSKY["beta"],
                 gamma: float = FOCAL_TVERSKY["gamma"], smooth: float = FOCAL_TVERSKY["smooth"]) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma, self.smooth = alpha, beta, gamma, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        probs = logits.float().softmax(dim=1)
        valid = (target != IGNORE_LABEL).unsqueeze(1)
        onehot = F.one_hot(target.long().where(valid.squeeze(1), 0), num_classes).permute(0, 3, 1, 2)
        probs, onehot = probs * valid, onehot * valid
        dims = (0, 2, 3)
        tp = (probs * onehot).sum(dims)
        fp = (probs * (1 - onehot)).sum(dims)
        fn = ((1 - probs) * onehot).sum(dims)
        tversky = (tp + self.smooth) / (tp + self.alpha * fp + self.beta * fn + self.smooth)
        return (1 - tversky).clamp(min=0).pow(self.gamma).mean()


def build_loss(name: str, weights: torch.Tensor | None = None, alpha: float = FOCAL_TVERSKY["alpha"],
               beta: float = FOCAL_TVERSKY["beta"], gamma: float = FOCAL_TVERSKY["gamma"],
               smooth: float = FOCAL_TVERSKY["smooth"]) -> nn.Module:
    if name == "cross_entropy":
        return CrossEntropy()
    if name == "weighted_cross_entropy":
        if weights is None:
            raise ValueError("weighted_cross_entropy needs class weights")
        return CrossEntropy(weights)
    if name == "focal_tversky":
        return FocalTversky(alpha, beta, gamma, smooth)
    raise ValueError(f"unknown loss {name!r}; use one of {LOSSES}")
