"""Segmentation losses, all ignoring the label 255."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cocoseg.coco import IGNORE_LABEL

LOSSES = ("cross_entropy", "weighted_cross_entropy", "focal_tversky")
WEIGHT_SCHEMES = ("inverse_sqrt", "median_frequency", "inverse")


def class_weights(pixel_counts: np.ndarray, scheme: str = "inverse_sqrt") -> np.ndarray:
    """Per-class weights from pixel counts (background first), scaled to a pixel-weighted mean of 1.

    inverse_sqrt: w_c = 1/sqrt(f_c); inverse: w_c = 1/f_c; median_frequency (Eigen & Fergus 2015):
    w_c = median(f)/f_c, with f_c the class's share of labelled pixels. A class without pixels gets
    the largest weight of the others.
    """
    counts = np.asarray(pixel_counts, dtype=np.float64)
    freq = counts / counts.sum()
    present = freq > 0
    weights = np.zeros_like(freq)
    if scheme == "inverse_sqrt":
        weights[present] = 1 / np.sqrt(freq[present])
    elif scheme == "inverse":
        weights[present] = 1 / freq[present]
    elif scheme == "median_frequency":
        weights[present] = np.median(freq[present]) / freq[present]
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
    beta > alpha penalises missed pixels more than false alarms; gamma < 1 focuses on hard classes.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, smooth: float = 1.0) -> None:
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


def build_loss(name: str, weights: torch.Tensor | None = None, alpha: float = 0.3, beta: float = 0.7,
               gamma: float = 0.75, smooth: float = 1.0) -> nn.Module:
    if name == "cross_entropy":
        return CrossEntropy()
    if name == "weighted_cross_entropy":
        if weights is None:
            raise ValueError("weighted_cross_entropy needs class weights")
        return CrossEntropy(weights)
    if name == "focal_tversky":
        return FocalTversky(alpha, beta, gamma, smooth)
    raise ValueError(f"unknown loss {name!r}; use one of {LOSSES}")
