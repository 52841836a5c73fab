"""Losses against values worked out by hand; ignore pixels contribute nothing."""

import math

import numpy as np
import pytest
import torch

from cocoseg.losses import CrossEntropy, FocalTversky, build_loss, class_weights


def two_pixel_batch():
    # one image, 2 classes, 1x2 pixels: logits chosen so that softmax gives p = (0.8, 0.2) and (0.3, 0.7)
    p = torch.tensor([[0.8, 0.3], [0.2, 0.7]])
    logits = p.log().reshape(1, 2, 1, 2)
    return logits, p


def test_cross_entropy_by_hand():
    logits, _ = two_pixel_batch()
    target = torch.tensor([[[0, 1]]])
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert CrossEntropy()(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_weighted_cross_entropy_by_hand():
    logits, _ = two_pixel_batch()
    target = torch.tensor([[[0, 1]]])
    w = torch.tensor([1.0, 3.0])
    expected = -(1 * math.log(0.8) + 3 * math.log(0.7)) / (1 + 3)
    assert CrossEntropy(w)(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_focal_tversky_by_hand():
    logits, _p = two_pixel_batch()
    target = torch.tensor([[[0, 1]]])
    alpha, beta, gamma, s = 0.3, 0.7, 0.75, 1.0
    # class 0: TP = 0.8, FP = 0.3, FN = 0.2 ; class 1: TP = 0.7, FP = 0.2, FN = 0.3
    ti0 = (0.8 + s) / (0.8 + alpha * 0.3 + beta * 0.2 + s)
    ti1 = (0.7 + s) / (0.7 + alpha * 0.2 + beta * 0.3 + s)
    expected = ((1 - ti0) ** gamma + (1 - ti1) ** gamma) / 2
    loss = FocalTversky(alpha, beta, gamma, s)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name", ["cross_entropy", "weighted_cross_entropy", "focal_tversky"])
def test_ignore_pixels_contribute_nothing(name):
    torch.manual_seed(0)
    loss_fn = build_loss(name, torch.tensor([0.5, 1.0, 2.0]))
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, :2] = 255
    other_logits = logits.detach().clone()
    other_logits[0, :, :2] = torch.randn(3, 2, 4) * 10  # anything at the ignored pixels
    assert loss_fn(logits, target).item() == pytest.approx(loss_fn(other_logits, target).item(), rel=1e-6)
    loss_fn(logits, target).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[0, :, :2] == 0).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["cross_entropy", "focal_tversky"])
def test_perfect_prediction_has_near_zero_loss_and_finite_gradients(name):
    target = torch.randint(0, 3, (2, 8, 8))
    logits = (torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40).requires_grad_()
    loss = build_loss(name)(logits, target)
    assert loss.item() < 1e-3
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_class_weight_schemes():
    counts = np.array([800, 100, 100, 0])
    inv_sqrt = class_weights(counts, "inverse_sqrt")
    freq = counts / counts.sum()
    raw = np.array([1 / math.sqrt(0.8), 1 / math.sqrt(0.1), 1 / math.sqrt(0.1), 1 / math.sqrt(0.1)])
    np.testing.assert_allclose(inv_sqrt, raw / (raw * freq).sum())
    median = class_weights(counts, "median_frequency")
    np.testing.assert_allclose(median[:3] / median[1], [0.1 / 0.8, 1, 1])
    assert (inv_sqrt * freq).sum() == pytest.approx(1)
    with pytest.raises(ValueError, match="unknown class weight scheme"):
        class_weights(counts, "magic")


def test_median_frequency_counts_only_the_images_that_contain_the_class():
    # Eigen & Fergus: g_c = pixels of c / pixels of the images containing c; w_c = median(g) / g_c.
    image_pixels = np.array([[90, 10, 0], [50, 0, 50], [100, 0, 0]])
    # g = (240/300, 10/100, 50/100) = (0.8, 0.1, 0.5); median 0.5 -> raw weights (0.625, 5, 1);
    # the pixel shares (0.8, 1/30, 1/6) give a pixel-weighted mean of 0.5 + 1/6 + 1/6 = 5/6.
    expected = np.array([0.625, 5.0, 1.0]) / (5 / 6)
    np.testing.assert_allclose(class_weights(image_pixels, "median_frequency"), expected)
