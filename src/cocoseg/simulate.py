"""Simulated studies with known truth, to check that the comparison keeps its stated error rates.

A study is two configurations evaluated on the same N test images, each trained with S seeds.
Every image has a difficulty shared by all runs, every run (configuration and seed) a quality of
its own, and every run and image a further shift; a class's pixels on an image are predicted
correctly with probability sigmoid(class base + run quality + image difficulty + shift), and the
errors go to the other classes. The per-image confusion matrices are what ``evaluate`` writes, so
the real comparison code runs on them. Both configurations draw run qualities from the same
distribution, shifted by ``effect`` (logits) for the second one: with ``effect`` 0 the true
difference is exactly 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

CLASS_BASE = np.array([3.0, 1.2, 0.4, 0.8])  # logits: background easy, then three object classes
OBJECT_SHARE = np.array([0.6, 0.35, 0.5])  # how often each object class is in an image
ERRORS_TO_BACKGROUND = 0.8  # the share of an object class's errors labelled background


@dataclass(frozen=True)
class StudyModel:
    """Logit standard deviations of the seed, image and seed-by-image effects, and the true shift."""

    seed_sd: float
    image_sd: float
    interaction_sd: float
    configuration_image_sd: float = 0.0  # how differently the two configurations find the same images hard
    images: int = 60
    effect: float = 0.0


def image_pixels(rng: np.random.Generator, images: int) -> np.ndarray:
    """N x C true pixel counts: background on every image, each object class in some."""
    present = rng.random((images, len(OBJECT_SHARE))) < OBJECT_SHARE
    present[~present.any(axis=1), 0] = True  # every image holds an object
    objects = np.where(present, rng.lognormal(6.5, 0.8, present.shape), 0)
    background = rng.uniform(2000, 6000, (images, 1))
    return np.round(np.hstack([background, objects])).astype(np.int64)


def run_confusions(pixels: np.ndarray, logit: np.ndarray) -> np.ndarray:
    """(..., N, C, C) confusions from true pixels (N x C) and each pixel class's logit of being right (..., N, C)."""
    classes = pixels.shape[1]
    correct = np.round(pixels / (1 + np.exp(-logit))).astype(np.int64)
    wrong = pixels - correct
    # Where each class's errors go: objects mostly to background, background to the objects present.
    objects = np.full((classes, classes), (1 - ERRORS_TO_BACKGROUND) / (classes - 2))
    objects[:, 0] = ERRORS_TO_BACKGROUND
    np.fill_diagonal(objects, 0.0)
    present = (pixels[:, 1:] > 0).astype(np.float64)
    to = np.repeat(objects[None], len(pixels), axis=0)
    to[:, 0, 0], to[:, 0, 1:] = 0.0, present / present.sum(axis=1, keepdims=True)
    spread = np.floor(wrong[..., None] * to).astype(np.int64)
    spread[..., 0, 1] += wrong[..., 0] - spread[..., 0, :].sum(-1)  # rounding leftovers stay wrong
    for c in range(1, classes):
        spread[..., c, 0] += wrong[..., c] - spread[..., c, :].sum(-1)
    confusion = spread
    index = np.arange(classes)
    confusion[..., index, index] = correct
    return confusion


def simulate_study(model: StudyModel, seeds: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The reference's and the other configuration's S x N x C x C per-image confusions."""
    pixels = image_pixels(rng, model.images)
    difficulty = rng.normal(0, model.image_sd, (model.images, 1))
    studies = []
    for shift in (0.0, model.effect):
        own_difficulty = rng.normal(0, model.configuration_image_sd, (model.images, 1))
        quality = shift + rng.normal(0, model.seed_sd, (seeds, 1, 1))
        interaction = rng.normal(0, model.interaction_sd, (seeds, model.images, 1))
        studies.append(run_confusions(pixels, CLASS_BASE + quality + difficulty + own_difficulty + interaction))
    return studies[0], studies[1]


@functools.cache  # the same model's truth serves several arms and the benchmark's baseline
def true_miou(model: StudyModel, shift: float = 0.0, images: int = 100_000, nodes: int = 12, seed: int = 1) -> float:
    """The configuration's true mIoU: its expected mIoU on unlimited test images, averaged over seeds.

    A run's mIoU on unlimited images is that of its expected confusion, estimated on ``images`` fresh
    images; the average over the normal run quality is Gauss-Hermite quadrature with ``nodes`` nodes.
    """
    from cocoseg.stats import statistics

    rng = np.random.default_rng(seed)
    pixels = image_pixels(rng, images)
    image_sd = np.hypot(model.image_sd, model.configuration_image_sd)
    difficulty = rng.normal(0, image_sd, (images, 1)) + rng.normal(0, model.interaction_sd, (images, 1))
    quality, weight = np.polynomial.hermite_e.hermegauss(nodes)
    values = [statistics(run_confusions(pixels, CLASS_BASE + shift + model.seed_sd * q + difficulty).sum(axis=0))[0]
              for q in quality]
    return float(np.dot(weight / weight.sum(), values))


@dataclass(frozen=True)
class Arm:
    """A simulated setting: the study model, the seeds per configuration, and an effect (logits) it should find."""

    name: str
    model: StudyModel
    seeds: int
    large_effect: float


ARMS = (
    Arm("seed spread dominates", StudyModel(seed_sd=0.12, image_sd=0.1, interaction_sd=0.05), 2, 2.3),
    Arm("seed spread dominates", StudyModel(seed_sd=0.12, image_sd=0.1, interaction_sd=0.05), 3, 0.5),
    Arm("seed and image spread comparable",
        StudyModel(seed_sd=0.06, image_sd=0.4, interaction_sd=0.2, configuration_image_sd=0.3), 3, 0.36),
    Arm("five seeds", StudyModel(seed_sd=0.08, image_sd=0.3, interaction_sd=0.15, configuration_image_sd=0.2), 5, 0.28),
    Arm("ten seeds", StudyModel(seed_sd=0.08, image_sd=0.3, interaction_sd=0.15, configuration_image_sd=0.2), 10, 0.2),
)
TESTED_ARMS = ARMS[:4]  # the suite's; benchmarks/bench_comparison.py runs them all
REFERENCE, OTHER = "reference", "other"


@dataclass(frozen=True)
class Calibration:
    """Rates over simulated studies: how often each claim was wrong, and how often the effect was found."""

    studies: int
    false_positive: float  # significant when the true difference is 0
    difference_missed: float  # the difference's 95% interval missed the true difference (0)
    interval_missed: float  # a configuration's 95% interval missed its true mIoU
    class_false_positive: float  # a class's IoU difference below 5% (unadjusted) when there is none
    power: float  # significant, in the right direction, when the true difference is the arm's large effect
    effect_missed: float  # the difference's interval missed the true large effect
    true_effect: float  # in mIoU
    seed_sd: float  # mean estimated seed SD of one run's mIoU
    image_se: float  # mean estimated test-image SE of a configuration's mIoU


def _runs(seeds: int) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": s, "val_miou": 0.5, "steps": 1, "images": 1, "train_minutes": 0.0}
                         for v in (REFERENCE, OTHER) for s in range(seeds)])


def _simulated_tables(model: StudyModel, runs: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame,
                                                                                                 pd.DataFrame]:
    from cocoseg.compare import compare_confusions

    reference, other = simulate_study(model, len(runs) // 2, rng)
    table, per_class = compare_confusions(runs, {REFERENCE: reference, OTHER: other}, ["a", "b", "c"], REFERENCE)
    return table.set_index("variant"), per_class[per_class["variant"] == OTHER]


def calibrate(arm: Arm, studies: int, effect_studies: int, seed: int = 0) -> Calibration:
    """Runs the comparison on ``studies`` simulated studies without a difference and ``effect_studies`` with
    the arm's large effect."""
    rng = np.random.default_rng(seed)
    truth, runs = true_miou(arm.model), _runs(arm.seeds)
    null = [_simulated_tables(arm.model, runs, rng) for _ in range(studies)]
    shifted = StudyModel(**{**arm.model.__dict__, "effect": arm.large_effect})
    true_effect = true_miou(arm.model, arm.large_effect) - truth
    found = [_simulated_tables(shifted, runs, rng)[0].loc[OTHER] for _ in range(effect_studies)]
    other = pd.DataFrame([table.loc[OTHER] for table, _ in null])
    reference = pd.DataFrame([table.loc[REFERENCE] for table, _ in null])
    classes = pd.concat([per_class for _, per_class in null])
    found = pd.DataFrame(found)
    return Calibration(
        studies=studies,
        false_positive=float(other["significant"].mean()),
        difference_missed=float(((other["delta_ci_low"] > 0) | (other["delta_ci_high"] < 0)).mean()),
        interval_missed=float(((reference["test_miou_ci_low"] > truth) | (reference["test_miou_ci_high"] < truth))
                              .mean()),
        class_false_positive=float((classes["p_value"] < 0.05).mean()),
        power=float((found["significant"] & (found["delta_miou"] > 0)).mean()),
        effect_missed=float(((found["delta_ci_low"] > true_effect) | (found["delta_ci_high"] < true_effect)).mean()),
        true_effect=true_effect,
        seed_sd=float(reference["test_miou_sd"].mean()),
        image_se=float(reference["test_miou_image_se"].mean()),
    )
