"""How sure a result is: variance components, intervals and tests that keep their level with few seeds.

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

The two are added, and a generalized pivot (``Inference``) carries the uncertainty of a seed
variance estimated from few seeds into the interval and the p-value. A difference between two
configurations is unpaired at the seed level (seed s of one configuration shares nothing with seed
s of another: the seed parts add, with Welch's degrees of freedom, and seed sets may differ) and
paired by test image (the image component is that of the per-image difference). With one seed the
seed part cannot be estimated: the interval then covers the test images only.
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
    images_with_class: np.ndarray  # C: test images in which each class is present

    @classmethod
    def from_confusions(cls, confusions: np.ndarray) -> Configuration:
        values, left_out = jackknife(confusions)
        # A statistic undefined without image i (the class only there) moves nothing: deviation 0.
        centred = left_out - nanmean(left_out, axis=1)[:, None]
        centred = np.where(np.isfinite(centred), centred, 0.0)
        images = confusions.shape[1]
        scaled = centred * np.sqrt((images - 1) / images)
        return cls(values, scaled.mean(axis=0), (scaled**2).sum(axis=1).mean(axis=0),
                   confusions.sum(axis=(0, 1, 2)), (confusions[0].sum(axis=-1) > 0).sum(axis=0))

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
    """An estimate with its variance components, 95% interval and p-value (arrays over statistics).

    The interval and the test are generalized (Weerahandi 1993): the pivot is |Z| sqrt(seed_var seed_df / X
    + image_var), with X chi-square with ``seed_df`` degrees of freedom, so the uncertainty of a seed
    variance estimated from few seeds widens them. With no image part this is Student's (or Welch's) t;
    with no seed part, the normal.
    """

    estimate: np.ndarray
    seed_var: np.ndarray  # the seed component of the estimate's variance (0 where it cannot be estimated)
    seed_df: np.ndarray  # its degrees of freedom (inf where there is none)
    image_var: np.ndarray  # the test-image component

    @property
    def se(self) -> np.ndarray:
        return np.sqrt(self.seed_var + self.image_var)

    @functools.cached_property
    def half_width(self) -> np.ndarray:
        return generalized_quantile(self.seed_var, self.seed_df, self.image_var, CONFIDENCE)

    @property
    def low(self) -> np.ndarray:
        return self.estimate - self.half_width

    @property
    def high(self) -> np.ndarray:
        return self.estimate + self.half_width

    @property
    def p_value(self) -> np.ndarray:
        """Two-sided generalized p-value of 0: P(pivot >= |estimate|); NaN where the standard error is 0."""
        ratio, weight = _chi2_nodes(self.seed_df)
        scale = np.sqrt(self.seed_var[..., None] / ratio + self.image_var[..., None])
        with np.errstate(divide="ignore", invalid="ignore"):
            p = (weight * 2 * scipy_special.ndtr(-np.abs(self.estimate)[..., None] / scale)).sum(axis=-1)
        return np.where(self.se > 0, p, np.nan)


def satterthwaite(components: list[tuple[np.ndarray, np.ndarray | float]]) -> np.ndarray:
    """Degrees of freedom of a sum of independent variance estimates, each given with its own df (inf: known)."""
    total = sum(np.asarray(v, dtype=np.float64) for v, _ in components)
    with np.errstate(divide="ignore", invalid="ignore"):
        denominator = sum(np.where(np.asarray(v) > 0, np.asarray(v, dtype=np.float64) ** 2 / df, 0.0)
                          for v, df in components)
        return np.where(denominator > 0, total**2 / np.where(denominator > 0, denominator, 1), np.inf)




def _probability_nodes() -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights (8 per segment) over the chi-square's probability scale, its segments
    finest in the lower tail, where small draws make the pivot's tail: p-values down to 1e-6 within 1e-3."""
    edges = np.array([0, 1e-9, 1e-7, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 1.0])
    x, w = np.polynomial.legendre.leggauss(8)
    half, centre = np.diff(edges)[:, None] / 2, (edges[:-1] + edges[1:])[:, None] / 2
    return (centre + half * x).ravel(), (half * w).ravel()


_MIDPOINTS, _WEIGHTS = _probability_nodes()


_DF_GRID = np.geomspace(1.0, 1e5, 801)  # beyond it X / df is 1 within 1%


@functools.cache
def _log_ratio_table() -> np.ndarray:
    """log(X / df) at the probability nodes for every df of ``_DF_GRID`` (once: chi-square quantiles are slow)."""
    return np.log(scipy_stats.chi2.ppf(_MIDPOINTS, _DF_GRID[:, None]) / _DF_GRID[:, None])


def _chi2_nodes(df: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """X / df at the probability nodes, for each df (..., nodes), and the nodes' weights (nodes,).

    Interpolated linearly in log(df) between the table's rows (exact at 1, 2, 4, ...; within 1e-4 between);
    an infinite df (a variance known exactly) gives 1.
    """
    df = np.asarray(df, dtype=np.float64)
    position = np.interp(np.log(np.clip(np.nan_to_num(df, posinf=1e5), 1.0, 1e5)), np.log(_DF_GRID),
                         np.arange(len(_DF_GRID)))
    below = np.minimum(np.floor(position).astype(int), len(_DF_GRID) - 2)
    weight = (position - below)[..., None]
    table = _log_ratio_table()
    ratio = np.exp((1 - weight) * table[below] + weight * table[below + 1])
    return np.where(np.isinf(df)[..., None], 1.0, ratio), _WEIGHTS


def generalized_quantile(seed_var: np.ndarray, seed_df: np.ndarray, image_var: np.ndarray,
                         confidence: float) -> np.ndarray:
    """h with P(|Z| sqrt(seed_var seed_df / X + image_var) <= h) = ``confidence``: the interval's half-width.

    Z is standard normal and X chi-square with ``seed_df`` degrees of freedom; the integral over X is
    Gauss-Legendre quadrature on its quantiles, and h is found by Newton's method (to 1e-12 relative).
    NaN where ``seed_df`` is NaN or not positive, as Student's t.
    """
    seed_var, image_var = np.asarray(seed_var, dtype=np.float64), np.asarray(image_var, dtype=np.float64)
    ratio, weight = _chi2_nodes(seed_df)
    scale = np.sqrt(seed_var[..., None] / ratio + image_var[..., None])
    missed_target, se = 1 - confidence, np.sqrt(seed_var + image_var)
    # The probability of missing, sum of weight 2 Phi(-h / scale), is convex and falling in h > 0: started
    # below h (half the normal's quantile, which has no seed uncertainty), Newton's steps rise to h without
    # passing it.
    h = np.broadcast_to(0.5 * scipy_special.ndtri(1 - missed_target / 2) * se, scale.shape[:-1]).copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(100):
            z = h[..., None] / scale
            missed = (weight * 2 * scipy_special.ndtr(-z)).sum(axis=-1)
            slope = (weight * 2 * np.exp(-z * z / 2) / (np.sqrt(2 * np.pi) * scale)).sum(axis=-1)
            step = (missed - missed_target) / slope
            h = h + step
            if not np.any(np.abs(step) > 1e-12 * h):  # NaN (no variance) counts as done
                break
    defined = np.asarray(seed_df, dtype=np.float64) > 0
    return np.where(seed_var + image_var > 0, np.where(defined, h, np.nan), 0.0)


def _seed_component(configuration: Configuration) -> tuple[np.ndarray, float]:
    if configuration.seeds < 2:
        return np.zeros(configuration.values.shape[1]), np.inf
    return configuration.seed_var / configuration.seeds, float(configuration.seeds - 1)


def inference(configuration: Configuration) -> Inference:
    """The configuration's mean over seeds, with seed and shared test-image variance."""
    seed_part, seed_df = _seed_component(configuration)
    image_part = np.maximum(configuration.image_var_of_mean - configuration.interaction_var_of_mean, 0)
    return Inference(configuration.mean, seed_part, np.full_like(seed_part, seed_df), image_part)


def difference_image_var(a: Configuration, b: Configuration) -> np.ndarray:
    """Test-image variance of a's mean minus b's, paired image by image, without the seed-specific parts."""
    paired = ((a.deviation - b.deviation) ** 2).sum(axis=0)
    return np.maximum(paired - a.interaction_var_of_mean - b.interaction_var_of_mean, 0)


def difference(a: Configuration, b: Configuration) -> Inference:
    """a's mean minus b's, unpaired over seeds (the two seed variances combined with Welch's degrees of
    freedom) and paired over test images."""
    if a.images != b.images:
        raise ValueError(f"the configurations were evaluated on different numbers of test images: {a.images}, "
                         f"{b.images}")
    (seed_a, df_a), (seed_b, df_b) = _seed_component(a), _seed_component(b)
    seed_df = satterthwaite([(seed_a, df_a), (seed_b, df_b)])
    return Inference(a.mean - b.mean, seed_a + seed_b, seed_df, difference_image_var(a, b))


def detectable_difference(seed_var_a: np.ndarray, seeds_a: np.ndarray, seed_var_b: np.ndarray,
                          seeds_b: np.ndarray, image_var: np.ndarray, power: float = POWER) -> np.ndarray:
    """The smallest true difference the 5% test finds with probability ``power``, with these seeds.

    The usual approximation for a symmetric pivot: its 97.5% quantile (where the test rejects) plus its
    ``power`` quantile, both of the generalized pivot the test would use with these seed counts.
    """
    seeds_a, seeds_b = np.asarray(seeds_a, dtype=np.float64), np.asarray(seeds_b, dtype=np.float64)
    seed_a, seed_b = seed_var_a / seeds_a, seed_var_b / seeds_b
    seed_df = satterthwaite([(seed_a, seeds_a - 1), (seed_b, seeds_b - 1)])
    seed_var, image_var = seed_a + seed_b, np.broadcast_to(image_var, np.shape(seed_a))
    return (generalized_quantile(seed_var, seed_df, image_var, CONFIDENCE)
            + generalized_quantile(seed_var, seed_df, image_var, 2 * power - 1))


def seeds_needed(delta: float | np.ndarray, seed_var_a: float, seed_var_b: float, image_var: float,
                 most: int = 100) -> float | np.ndarray:
    """Seeds per configuration for 80% power to detect ``delta`` (one difference or an array of them) on these
    test images: the fewest from 2 to ``most`` whose ``detectable_difference`` is at most ``delta``. NaN where a
    seed variance is unknown, inf beyond ``most`` (the test images' own error, which more seeds do not shrink,
    may put ``delta`` out of reach). The same shape as ``delta``.
    """
    if most < 2:
        raise ValueError(f"most={most}: a seed variance needs at least 2 seeds per configuration")
    delta = np.asarray(delta, dtype=np.float64)
    if not np.isfinite(seed_var_a + seed_var_b + image_var):
        return np.full(delta.shape, np.nan)[()]
    seeds = np.arange(2, most + 1)
    # The whole curve at once (one vectorized call): it falls as seeds grow, so the first count that reaches
    # ``delta`` is the one a bisection would find.
    reached = detectable_difference(seed_var_a, seeds, seed_var_b, seeds, image_var) <= delta[..., None]
    return np.where(reached.any(axis=-1), seeds[reached.argmax(axis=-1)], np.inf)[()]


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values; NaNs stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted
