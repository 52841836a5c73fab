"""Segmentation metrics, all derived from one confusion matrix (rows: truth, columns: prediction)."""

from __future__ import annotations

import numpy as np
import torch

from cocoseg.coco import IGNORE_LABEL


def confusion_counts(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The flattened confusion matrix (C*C, int64, on the tensors' device); pixels labelled 255 are left out.

    Ignored pixels go to one extra bin rather than being masked out: boolean indexing would make
    the host wait for the GPU. (CUDA's bincount still reads the largest value once per call.)
    """
    bins = num_classes**2
    index = target.long() * num_classes + prediction.long()
    index = torch.where(target == IGNORE_LABEL, bins, index).flatten()
    return torch.bincount(index, minlength=bins + 1)[:bins]


class ConfusionMatrix:
    """Accumulates confusion counts on the tensors' device."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Adds one batch (or image); returns its own flattened counts."""
        counts = confusion_counts(prediction, target, self.num_classes)
        self.matrix += counts
        return counts

    def numpy(self) -> np.ndarray:
        return self.matrix.view(self.num_classes, self.num_classes).cpu().numpy()


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, object]:
    """Per-class IoU, Dice, precision, recall; mIoU, mean Dice, pixel accuracy, mean class accuracy, fwIoU.

    A class that never occurs and is never predicted has no IoU (NaN) and is left out of the means.
    ``miou`` averages every class, background included (as the seed study reported);
    ``miou_objects`` leaves background out.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    truth, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    iou = _safe_divide(tp, truth + predicted - tp)
    dice = _safe_divide(2 * tp, truth + predicted)
    recall = _safe_divide(tp, truth)
    precision = _safe_divide(tp, predicted)
    total = confusion.sum()
    frequency = truth / total if total else np.zeros_like(truth)
    return {
        "iou": iou.tolist(), "dice": dice.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "miou_objects": float(np.nanmean(iou[1:])) if np.isfinite(iou[1:]).any() else float("nan"),
        "mean_dice": float(np.nanmean(dice)) if np.isfinite(dice).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_class_accuracy": float(np.nanmean(recall)) if np.isfinite(recall).any() else float("nan"),
        "fw_iou": float(np.nansum(frequency * iou)),
        "pixels": int(total),
    }
