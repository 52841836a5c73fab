"""How sure a result is: variance components, t intervals and tests that keep their level with few seeds.

Everything comes from per-image confusion matrices (rows truth, columns prediction). A
configuration (backbone-loss-sampling) trained with S seeds has S x N matrices for the N test
images; its statistic (test mIoU, or one class's IoU) is the mean over seeds of each seed's value
on the whole split. Its error has two parts (``docs/study.md`` gives the method and references):

- **seeds**: runs of one configuration differ; estimated by the variance of the S per-seed
  values (S - 1 degrees of freedom). It also holds the part of the test-image error that differs
  from seed to seed.
- **test images**: the test split is one sample of images, shared by every run. The delete-one
  jackknife over images gives each run's image variance and the covariances between runs; the
  part shared by all of a configuration's seeds (the mean covariance between distinct runs) is
  the image component, so nothing is counted twice.

The two are added, and Satterthwaite's degrees of freedom give a t interval. A difference between
two configurations is unpaired at the seed level (seed s of one configuration shares nothing with
seed s of another: the seed parts add, and seed sets may differ) and paired by test image (the
image component is that of the per-image difference). With one seed the seed part cannot be
estimated: the interval then covers the test images only, and says so.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import special as scipy_special
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8


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


def statistics(confusion: np.ndarray) -> np.ndarray:
    """mIoU, mIoU without background, then IoU per class: (..., C, C) -> (..., 2 + C)."""
    iou = iou_per_class(confusion)
    return np.concatenate([nanmean(iou)[..., None], nanmean(iou[..., 1:])[..., None], iou], axis=-1)


def jackknife(confusions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each run's statistics on the whole split, and with each image left out in turn.

    ``confusions`` is S x N x C x C; returns S x K and S x N x K (K = 2 + C, see ``statistics``).
    """
    whole = confusions.astype(np.float64).sum(axis=1)
    return statistics(whole), statistics(whole[:, None] - confusions)


@dataclass(frozen=True)
class Configuration:
    """One configuration's runs on the same N test images, for K statistics at once."""

    values: np.ndarray  # S x K: each seed's statistics on the whole test split
    deviation: np.ndarray  # N x K: jackknife deviations, mean over seeds, scaled so that sum of squares = variance
    run_image_var: np.ndarray  # K: each run's own jackknife variance, mean over seeds
    predicted_pixels: np.ndarray  # C: pixels predicted as each class, over every run and image

    @classmethod
    def from_confusions(cls, confusions: np.ndarray) -> Configuration:
        values, left_out = jackknife(confusions)
        # A statistic undefined without image i (the class only there) moves nothing: deviation 0.
        centred = left_out - nanmean(left_out, axis=1)[:, None]
        centred = np.where(np.isfinite(centred), centred, 0.0)
        images = confusions.shape[1]
        scaled = centred * np.sqrt((images - 1) / images)
        return cls(values, scaled.mean(axis=0), (scaled**2).sum(axis=1).mean(axis=0),
                   confusions.sum(axis=(0, 1, 2)))

    @property
    def seeds(self) -> int:
        return len(self.values)

    @property
    def images(self) -> int:
        return len(self.deviation)

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(axis=0)

    @property
    def seed_var(self) -> np.ndarray:
        """Variance of one seed's value around the configuration's (NaN with one seed)."""
        if self.seeds < 2:
            return np.full(self.values.shape[1], np.nan)
        return self.values.var(axis=0, ddof=1)

    @property
    def seed_sd(self) -> np.ndarray:
        return np.sqrt(self.seed_var)

    @property
    def image_var_of_mean(self) -> np.ndarray:
        """Jackknife variance over test images of the mean over seeds."""
        return (self.deviation**2).sum(axis=0)

    @property
    def interaction_var_of_mean(self) -> np.ndarray:
        """The seed-specific part of ``image_var_of_mean``, already in the seed variance (0 with one seed).

        Under image effects common to the seeds plus seed-specific ones, the mean covariance between
        distinct runs is the common part; the rest of each run's variance is seed-specific.
        """
        if self.seeds < 2:
            return np.zeros_like(self.run_image_var)
        return np.maximum(self.run_image_var - self.image_var_of_mean, 0) / (self.seeds - 1)

    @property
    def never_predicted(self) -> np.ndarray:
        """Per class: no run predicts it anywhere (its IoU is 0 in every run, with no spread to estimate)."""
        return self.predicted_pixels == 0


@dataclass(frozen=True)
class Inference:
    """An estimate with its variance components and 95% interval (arrays over statistics)."""

    estimate: np.ndarray
    seed_var: np.ndarray  # the seed component of the estimate's variance (0 where it cannot be estimated)
    image_var: np.ndarray  # the test-image component
    df: np.ndarray  # Satterthwaite's degrees of freedom
    half_width: np.ndarray

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(self.seed_var + self.image_var)

    @property
    def low(self) -> np.ndarray:
        return self.estimate - self.half_width

    @property
    def high(self) -> np.ndarray:
        return self.estimate + self.half_width

    @property
    def p_value(self) -> np.ndarray:
        """Two-sided t test of 0 with ``df``; 1 where estimate and standard error are both 0, NaN for a nonzero
        exact value."""
        se = self.se
        with np.errstate(divide="ignore", invalid="ignore"):
            p = 2 * scipy_stats.t.sf(np.abs(self.estimate) / se, _finite_df(self.df))
        return np.where(se > 0, p, np.where(self.estimate == 0, 1.0, np.nan))


def _finite_df(df: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(df), df, np.inf)


def t_quantile(q: float, df: np.ndarray) -> np.ndarray:
    return scipy_stats.t.ppf(q, _finite_df(df))


def satterthwaite(components: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Degrees of freedom of a sum of independent variance estimates, each given with its own df."""
    total = sum(v for v, _ in components)
    with np.errstate(divide="ignore", invalid="ignore"):
        denominator = sum(v**2 / df for v, df in components)
        return np.where(denominator > 0, total**2 / np.where(denominator > 0, denominator, 1), np.inf)


def generalized_half_width(seed_var: np.ndarray, seed_df: float, image_var: np.ndarray,
                           points: int = 256) -> np.ndarray:
    """Half-width h of the 95% generalized confidence interval: P(|Z| sqrt(seed_var df / X + image_var) <= h)
    = 0.95, with Z standard normal and X chi-square with ``seed_df`` degrees of freedom (Weerahandi 1993).

    This carries the uncertainty of a seed variance estimated from 1 or 2 degrees of freedom into the
    interval, which Satterthwaite's df does not when that estimate happens to be small beside a
    well-determined image part (its intervals missed 12% of the time with 2 seeds in simulation).
    The integral over X is a midpoint rule on its quantiles; h is found by bisection.
    """
    if not np.isfinite(seed_df):
        return scipy_stats.norm.ppf(1 - ALPHA / 2) * np.sqrt(seed_var + image_var)
    ratio = _chi2_midpoints(seed_df, points)
    scale = np.sqrt(np.asarray(seed_var)[..., None] / ratio + np.asarray(image_var)[..., None])
    # Bracketed by the normal quantile at the smallest scale and a t with seed_df at the seed part alone.
    low = scipy_stats.norm.ppf(1 - ALPHA / 2) * scale.min(axis=-1)
    high = t_quantile(1 - ALPHA / 2, seed_df) * np.sqrt(np.asarray(seed_var) + np.asarray(image_var)) * 1.5
    for _ in range(32):
        middle = (low + high) / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            missed = 2 * scipy_special.ndtr(-middle[..., None] / scale).mean(axis=-1)
        too_narrow = missed > ALPHA
        low, high = np.where(too_narrow, middle, low), np.where(too_narrow, high, middle)
    return np.where(scale.max(axis=-1) > 0, high, 0.0)


@functools.cache
def _chi2_midpoints(df: float, points: int) -> np.ndarray:
    """X / df at the midpoints of ``points`` equal-probability bins of a chi-square with ``df``."""
    return scipy_stats.chi2.ppf((np.arange(points) + 0.5) / points, df) / df


def _seed_component(configuration: Configuration) -> tuple[np.ndarray, float]:
    if configuration.seeds < 2:
        return np.zeros(configuration.values.shape[1]), np.inf
    return configuration.seed_var / configuration.seeds, configuration.seeds - 1


def inference(configuration: Configuration) -> Inference:
    """The configuration's mean over seeds, with seed and shared test-image variance, and its generalized interval."""
    seed_part, seed_df = _seed_component(configuration)
    image_part = np.maximum(configuration.image_var_of_mean - configuration.interaction_var_of_mean, 0)
    df = satterthwaite([(seed_part, seed_df), (image_part, configuration.images - 1)])
    return Inference(configuration.mean, seed_part, image_part, df,
                     generalized_half_width(seed_part, seed_df, image_part))


def difference_image_var(a: Configuration, b: Configuration) -> np.ndarray:
    """Test-image variance of a's mean minus b's, paired image by image, without the seed-specific parts."""
    paired = ((a.deviation - b.deviation) ** 2).sum(axis=0)
    return np.maximum(paired - a.interaction_var_of_mean - b.interaction_var_of_mean, 0)


def difference(a: Configuration, b: Configuration) -> Inference:
    """a's mean minus b's, unpaired over seeds and paired over test images: a Welch-Satterthwaite t interval."""
    if a.images != b.images:
        raise ValueError(f"the configurations were evaluated on different numbers of test images: {a.images}, "
                         f"{b.images}")
    (seed_a, df_a), (seed_b, df_b) = _seed_component(a), _seed_component(b)
    image_part = difference_image_var(a, b)
    df = satterthwaite([(seed_a, df_a), (seed_b, df_b), (image_part, a.images - 1)])
    seed_part = seed_a + seed_b
    return Inference(a.mean - b.mean, seed_part, image_part, df,
                     t_quantile(1 - ALPHA / 2, df) * np.sqrt(seed_part + image_part))


def detectable_difference(seed_var_a: np.ndarray, seeds_a: np.ndarray, seed_var_b: np.ndarray,
                          seeds_b: np.ndarray, image_var: np.ndarray, images: int,
                          power: float = POWER) -> np.ndarray:
    """The smallest true difference the two-sided 5% t test finds with probability ``power``.

    The usual approximation (t_{1-alpha/2} + t_{power}) x SE, with the SE and Satterthwaite df the
    test would have with these seed counts and these variance components.
    """
    seed_a, seed_b = seed_var_a / seeds_a, seed_var_b / seeds_b
    df = satterthwaite([(seed_a, seeds_a - 1), (seed_b, seeds_b - 1), (image_var, images - 1)])
    se = np.sqrt(seed_a + seed_b + image_var)
    return (t_quantile(1 - ALPHA / 2, df) + t_quantile(power, df)) * se


def seeds_needed(delta: float, seed_var_a: float, seed_var_b: float, image_var: float, images: int,
                 most: int = 100) -> float:
    """Seeds per configuration for 80% power to detect ``delta`` on these test images; NaN beyond ``most``
    (the test images' own error, which more seeds do not shrink, may put ``delta`` out of reach)."""
    if not np.isfinite(seed_var_a + seed_var_b + image_var):
        return np.nan
    seeds = np.arange(2, most + 1, dtype=np.float64)
    detectable = detectable_difference(seed_var_a, seeds, seed_var_b, seeds, image_var, images)
    enough = np.flatnonzero(detectable <= delta)
    return float(seeds[enough[0]]) if len(enough) else np.nan


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values; NaNs stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted
