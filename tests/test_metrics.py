"""Metrics against confusion matrices worked out by hand."""

import math

import numpy as np
import pytest
import torch

from cocoseg.metrics import ConfusionMatrix, metrics_from_confusion


def test_confusion_matrix_counts_pixels_and_skips_ignore():
    truth = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    confusion = ConfusionMatrix(3)
    confusion.update(pred, truth)
    expected = np.array([[1, 1, 0],   # truth 0: one right, one taken for 1
                         [0, 2, 0],   # truth 1: both right
                         [1, 0, 1]])  # truth 2: one right, one taken for 0; the two 255 pixels are not counted
    np.testing.assert_array_equal(confusion.numpy(), expected)
    confusion.update(pred, truth)
    np.testing.assert_array_equal(confusion.numpy(), 2 * expected)


def test_metrics_by_hand():
    confusion = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    m = metrics_from_confusion(confusion)
    # class 0: TP 1, FP 1 (from truth 2), FN 1 -> IoU 1/3; class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: TP 1, FN 1 -> 1/2
    assert m["iou"] == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["miou_objects"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["dice"] == pytest.approx([2 / 4, 4 / 5, 2 / 3])
    assert m["precision"] == pytest.approx([1 / 2, 2 / 3, 1])
    assert m["recall"] == pytest.approx([1 / 2, 1, 1 / 2])
    assert m["pixel_accuracy"] == pytest.approx(4 / 6)
    assert m["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["fw_iou"] == pytest.approx(2 / 6 * 1 / 3 + 2 / 6 * 2 / 3 + 2 / 6 * 1 / 2)
    assert m["pixels"] == 6


def test_absent_class_is_left_out_of_the_means():
    # class 2 never occurs and is never predicted: no IoU, not a zero
    confusion = np.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    m = metrics_from_confusion(confusion)
    assert math.isnan(m["iou"][2]) and math.isnan(m["recall"][2]) and math.isnan(m["precision"][2])
    assert m["miou"] == pytest.approx((3 / 4 + 4 / 5) / 2)
    assert m["mean_class_accuracy"] == pytest.approx((3 / 4 + 1) / 2)


def test_class_predicted_but_absent_scores_zero():
    confusion = np.array([[3, 0, 1], [0, 4, 0], [0, 0, 0]])
    m = metrics_from_confusion(confusion)
    assert m["iou"][2] == 0.0
    assert math.isnan(m["recall"][2])
    assert m["precision"][2] == 0.0
    assert m["miou"] == pytest.approx((3 / 4 + 1 + 0) / 3)


def test_all_background_prediction_baseline():
    truth = torch.tensor([0] * 80 + [1] * 15 + [2] * 5)
    confusion = ConfusionMatrix(3)
    confusion.update(torch.zeros_like(truth), truth)
    m = metrics_from_confusion(confusion.numpy())
    assert m["iou"] == pytest.approx([0.8, 0.0, 0.0])
    assert m["miou"] == pytest.approx(0.8 / 3)
    assert m["pixel_accuracy"] == pytest.approx(0.8)
