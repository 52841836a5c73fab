"""Variance components, intervals that keep their level with few seeds, paired comparisons, power, Holm."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy import stats as scipy_stats

from cocoseg.compare import compare
from cocoseg.metrics import metrics_from_confusion
from cocoseg.plots import power_curves, write_comparison, write_tables
from cocoseg.simulate import TESTED_ARMS, calibrate
from cocoseg.stats import (
    Configuration,
    Inference,
    detectable_difference,
    difference,
    generalized_quantile,
    holm,
    inference,
    jackknife,
    seeds_needed,
)

CLASSES = ["a", "b"]
REFERENCE = "mobilenet_v3_large-cross_entropy-uniform"


def random_confusions(rng, seeds, images, classes=3, scale=50, noise=0.1):
    """Per-image confusions with a strong diagonal (off it ``noise`` times as many), some classes absent."""
    confusion = rng.poisson(scale * noise, size=(seeds, images, classes, classes))
    confusion[..., np.arange(classes), np.arange(classes)] += rng.poisson(scale, size=(seeds, images, classes))
    confusion[:, ::4, 2, :] = 0  # class 2 absent from every 4th image
    return confusion.astype(np.int64)


def test_jackknife_leaves_each_image_out_checked_against_the_metrics_module():
    confusion = random_confusions(np.random.default_rng(1), 2, 12)
    values, left_out = jackknife(confusion)
    for s in range(2):
        whole = metrics_from_confusion(confusion[s].sum(0))
        np.testing.assert_allclose(values[s], [whole["miou"], whole["miou_objects"], *whole["iou"]], rtol=1e-12)
        for i in range(12):
            expected = metrics_from_confusion(confusion[s].sum(0) - confusion[s, i])
            np.testing.assert_allclose(left_out[s, i], [expected["miou"], expected["miou_objects"], *expected["iou"]],
                                       rtol=1e-12)


def jackknife_covariance(a, b):
    """Jackknife covariance over images between two runs' mIoU, written out from the textbook formula."""
    n = len(a)
    return (n - 1) / n * np.sum((a - a.mean()) * (b - b.mean()))


def test_variance_components_by_hand():
    # Seed part: the per-seed values' variance; image part: the mean jackknife covariance between distinct runs
    # of a configuration; for a difference, the cross-configuration covariances too.
    rng = np.random.default_rng(3)
    first, second = random_confusions(rng, 3, 20), random_confusions(rng, 2, 20, noise=0.2)
    a, b = Configuration.from_confusions(first), Configuration.from_confusions(second)
    runs_a, runs_b = jackknife(first)[1][:, :, 0], jackknife(second)[1][:, :, 0]
    cov = lambda x, y: np.mean([jackknife_covariance(p, q) for p in x for q in y])  # noqa: E731
    offdiagonal = lambda x: np.mean([jackknife_covariance(x[i], x[j])  # noqa: E731
                                     for i in range(len(x)) for j in range(len(x)) if i != j])
    own = inference(a)
    assert a.seed_var[0] == pytest.approx(np.var(jackknife(first)[0][:, 0], ddof=1), rel=1e-12)
    assert own.seed_var[0] == pytest.approx(a.seed_var[0] / 3, rel=1e-12)
    assert own.image_var[0] == pytest.approx(max(offdiagonal(runs_a), 0), rel=1e-9, abs=1e-15)
    delta = difference(a, b)
    expected = offdiagonal(runs_a) + offdiagonal(runs_b) - 2 * cov(runs_a, runs_b)
    assert delta.image_var[0] == pytest.approx(max(expected, 0), rel=1e-9, abs=1e-15)
    assert delta.seed_var[0] == pytest.approx(a.seed_var[0] / 3 + b.seed_var[0] / 2, rel=1e-12)
    assert delta.estimate[0] == pytest.approx(a.mean[0] - b.mean[0])


def identical_images(per_seed_confusions, images=10):
    """Runs whose every test image is alike: no test-image error, only the seeds' spread."""
    return np.repeat(np.asarray(per_seed_confusions)[:, None], images, axis=1)


def seed_confusions(rng, seeds):
    return [np.diag(rng.integers(50, 100, 3)) + rng.integers(0, 30, (3, 3)) for _ in range(seeds)]


def test_without_image_error_the_difference_is_welchs_t_test():
    rng = np.random.default_rng(5)
    a = Configuration.from_confusions(identical_images(seed_confusions(rng, 3)))
    b = Configuration.from_confusions(identical_images(seed_confusions(rng, 4)))
    assert np.allclose(a.deviation, 0) and np.allclose(b.deviation, 0)
    delta = difference(a, b)
    welch = scipy_stats.ttest_ind(a.values[:, 0], b.values[:, 0], equal_var=False)
    assert delta.p_value[0] == pytest.approx(welch.pvalue, rel=2e-3)
    assert delta.seed_df[0] == pytest.approx(welch.df, rel=1e-9)
    low, high = welch.confidence_interval(0.95)
    assert (delta.low[0], delta.high[0]) == (pytest.approx(low, rel=1e-4), pytest.approx(high, rel=1e-4))
    # One configuration alone: Student's t interval with S - 1 degrees of freedom.
    own = inference(a)
    half = scipy_stats.t.ppf(0.975, 2) * a.values[:, 0].std(ddof=1) / np.sqrt(3)
    assert own.half_width[0] == pytest.approx(half, rel=1e-4)


def test_generalized_interval_between_its_two_limits():
    seed_var, image_var = np.array([1e-4, 0.0, 1e-4, 1e-4]), np.array([0.0, 1e-4, 1e-4, 1e-6])
    width = generalized_quantile(seed_var, 2.0, image_var, 0.95)
    assert width[0] == pytest.approx(scipy_stats.t.ppf(0.975, 2) * 1e-2, rel=1e-4)  # seeds alone: Student's t
    assert width[1] == pytest.approx(scipy_stats.norm.ppf(0.975) * 1e-2, rel=1e-6)  # images alone: normal
    total = np.sqrt(2e-4)
    assert scipy_stats.norm.ppf(0.975) * total < width[2] < scipy_stats.t.ppf(0.975, 2) * total
    # Monte Carlo check of the definition: P(|Z| sqrt(seed_var 2 / X + image_var) <= h) = 0.95.
    rng = np.random.default_rng(0)
    draws = np.abs(rng.standard_normal(400_000)) * np.sqrt(1e-4 * 2 / rng.chisquare(2, 400_000) + 1e-4)
    assert np.mean(draws <= width[2]) == pytest.approx(0.95, abs=0.002)
    # Its p-value is the same pivot's tail: at the interval's edge, 0.05.
    edge = Inference(width[2:3], seed_var[2:3], np.array([2.0]), image_var[2:3])
    assert edge.p_value[0] == pytest.approx(0.05, rel=1e-3)


def pivot_tail(h, seed_var, df, image_var):
    """P(|Z| sqrt(seed_var df / X + image_var) > h), integrated over X's chi-square density by scipy's adaptive
    quad (not the module's fixed nodes)."""
    def tail(x):
        return scipy_stats.chi2.pdf(x, df) * 2 * scipy_stats.norm.sf(h / np.sqrt(seed_var * df / x + image_var))
    return integrate.quad(tail, 0, df, limit=200)[0] + integrate.quad(tail, df, np.inf, limit=200)[0]


def test_generalized_quantile_solves_its_definition_by_adaptive_integration():
    for seed_var, df, image_var in [(1e-4, 1.0, 1e-6), (1e-4, 2.0, 1e-4), (3e-5, 4.5, 2e-5), (1e-4, 30.0, 1e-5)]:
        for confidence in (0.95, 0.6):
            h = float(generalized_quantile(np.array(seed_var), df, np.array(image_var), confidence))
            assert pivot_tail(h, seed_var, df, image_var) == pytest.approx(1 - confidence, rel=1e-3), (df, confidence)
    # No seed degrees of freedom (one seed), or unknown ones: undefined, as Student's t.
    assert np.isnan(generalized_quantile(np.array([1e-4, 1e-4]), np.array([0.0, np.nan]), np.array([1e-6, 1e-6]),
                                         0.95)).all()


def test_power_by_hand_and_its_limits():
    seed_var, image_var = 1e-4, 4e-6
    for seeds in (2, 3, 10):  # no image error: Welch's t with equal variances, df 2 (S - 1)
        se, df = np.sqrt(2 * seed_var / seeds), 2 * (seeds - 1)
        expected = (scipy_stats.t.ppf(0.975, df) + scipy_stats.t.ppf(0.8, df)) * se
        assert detectable_difference(seed_var, seeds, seed_var, seeds, 0.0) == pytest.approx(expected, rel=1e-4)
    # Unlimited seeds leave the test images' error: the normal approximation (z_0.975 + z_0.8) x image SE.
    unlimited = detectable_difference(seed_var, 10**7, seed_var, 10**7, image_var)
    assert unlimited == pytest.approx((scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * 2e-3, rel=1e-3)
    needed_2, needed_1 = (seeds_needed(d, seed_var, seed_var, image_var) for d in (0.02, 0.01))
    assert 2 <= needed_2 < needed_1 < np.inf
    assert detectable_difference(seed_var, needed_2, seed_var, needed_2, image_var) <= 0.02
    assert detectable_difference(seed_var, needed_2 - 1, seed_var, needed_2 - 1, image_var) > 0.02
    # Test images whose own error is above 0.02 / 2.8 leave 0.02 out of reach of any number of seeds.
    assert seeds_needed(0.02, seed_var, seed_var, (0.02 / 2.5) ** 2) == np.inf
    assert np.isnan(seeds_needed(0.02, np.nan, seed_var, image_var))
    assert np.isnan(detectable_difference(seed_var, 1, seed_var, 1, image_var))  # one seed: no test


def seeds_needed_one_count_at_a_time(delta, seed_var_a, seed_var_b, image_var, most):
    """The reference: a plain loop over seed counts, one scalar ``detectable_difference`` call each."""
    if np.isnan(seed_var_a + seed_var_b + image_var):
        return np.nan
    for seeds in range(2, most + 1):
        if detectable_difference(seed_var_a, seeds, seed_var_b, seeds, image_var) <= delta:
            return float(seeds)
    return np.inf


def test_seeds_needed_for_several_differences_at_once_against_a_loop_over_seed_counts():
    deltas, most = np.array([0.005, 0.01, 0.02, 0.05]), 60
    cases = [(1e-4, 1e-4, 4e-6), (4e-4, 1e-5, 1e-6), (1e-6, 3e-4, 2e-5), (2e-4, 2e-4, 0.0), (0.0, 0.0, 1e-5),
             (1e-3, 5e-4, 3e-7), (np.nan, 1e-4, 1e-6), (1e-4, 1e-4, np.nan)]
    outcomes = []
    for seed_var_a, seed_var_b, image_var in cases:
        expected = [seeds_needed_one_count_at_a_time(d, seed_var_a, seed_var_b, image_var, most) for d in deltas]
        together = seeds_needed(deltas, seed_var_a, seed_var_b, image_var, most)
        np.testing.assert_array_equal(together, expected)
        one = seeds_needed(float(deltas[1]), seed_var_a, seed_var_b, image_var, most)
        assert np.ndim(one) == 0
        np.testing.assert_equal(one, expected[1])
        outcomes += expected
    # The cases reach every kind of answer: the fewest (2), a count between, out of reach, unknown variance.
    assert 2 in outcomes and any(2 < o < most for o in outcomes) and np.inf in outcomes
    assert any(np.isnan(o) for o in outcomes)


def write_run(root, variant, seed, val_miou, confusion, image_ids, steps=10):
    """The files a run leaves: evaluation/metrics.json, training.json, evaluation/per_image_confusion.npz."""
    folder = root / variant / f"seed{seed}"
    (folder / "evaluation").mkdir(parents=True)
    test = metrics_from_confusion(confusion.sum(0))
    names = ["background", *CLASSES]
    record = {**{k: test[k] for k in ("miou", "miou_objects", "mean_dice", "pixel_accuracy", "mean_class_accuracy",
                                      "fw_iou")}, "iou": dict(zip(names, test["iou"]))}
    metrics = {"variant": variant, "seed": seed, "val": {"miou": val_miou}, "test": record}
    (folder / "evaluation" / "metrics.json").write_text(json.dumps(metrics))
    training = {"best_epoch": 1, "epochs": 1, "budget": "steps", "steps": steps, "images": steps * 4,
                "train_seconds": 60.0, "images_per_s": 1.0, "device": "cpu", "precision": "fp32",
                "memory_format": "channels_last"}
    (folder / "training.json").write_text(json.dumps(training))
    np.savez(folder / "evaluation" / "per_image_confusion.npz", image_id=image_ids, confusion=confusion)
    return folder


@pytest.fixture
def disagreeing_runs(tmp_path):
    """Three variants whose validation order (b, c, a) is not their test order (a, c, b); c has one seed."""
    rng = np.random.default_rng(2)
    ids = np.arange(100, 130)
    good, middling, poor, poorer = (random_confusions(rng, 1, 30, noise=n)[0] for n in (0.02, 0.1, 0.4, 0.45))
    folders = [write_run(tmp_path, "mobilenet_v3_large-cross_entropy-uniform", 0, 0.30, good, ids),
               write_run(tmp_path, "mobilenet_v3_large-cross_entropy-uniform", 1, 0.32, good[::-1], ids[::-1]),
               write_run(tmp_path, "resnet50-focal_tversky-oversample", 0, 0.60, poor, ids),
               write_run(tmp_path, "resnet50-focal_tversky-oversample", 1, 0.60, poorer, ids),
               write_run(tmp_path, "resnet50-cross_entropy-uniform", 0, 0.50, middling, ids)]
    return tmp_path, folders


def compare_folders(folders, reference=REFERENCE, classes=CLASSES):
    return compare([f / "evaluation/metrics.json" for f in folders], [f / "training.json" for f in folders],
                   [f / "evaluation/per_image_confusion.npz" for f in folders], classes, reference)


def test_comparison_ranks_by_validation_and_compares_with_the_reference(disagreeing_runs):
    _, folders = disagreeing_runs
    table, per_class = compare_folders(folders)
    assert list(table["variant"]) == ["resnet50-focal_tversky-oversample", "resnet50-cross_entropy-uniform", REFERENCE]
    assert table["test_miou"].is_monotonic_increasing  # test disagrees with validation, and does not decide
    ref = table.set_index("variant").loc[REFERENCE]
    assert ref["seeds"] == 2 and ref["seed_values"] == "0 1" and ref["covers"] == "test images and seeds"
    assert (ref["delta_miou"], ref["delta_ci_low"], ref["delta_ci_high"]) == (0, 0, 0)
    assert np.isnan(ref["p_value"]) and not ref["significant"]
    # Two seeds of identical predictions (listed in another order): sd 0, and the image pairing held.
    assert ref["test_miou_sd"] == pytest.approx(0)
    poor = table.set_index("variant").loc["resnet50-focal_tversky-oversample"]
    assert poor["delta_ci_high"] < 0 and poor["significant"] and np.isfinite(poor["detectable_delta"])
    assert poor["test_miou"] == pytest.approx(np.mean([json.loads((f / "evaluation/metrics.json").read_text())["test"]
                                                       ["miou"] for f in folders[2:4]]))
    # One seed: the interval covers the test images only, and no test is made (Holm's family is the other row).
    single = table.set_index("variant").loc["resnet50-cross_entropy-uniform"]
    assert single["covers"] == "test images only (one seed)" and np.isnan(single["detectable_delta"])
    assert np.isnan(single["p_value"]) and not single["significant"] and "one seed" in single["power_note"]
    assert poor["p_holm"] == pytest.approx(poor["p_value"])
    reference_rows = per_class[per_class["variant"] == REFERENCE]
    assert (reference_rows[["delta_iou", "delta_ci_low", "delta_ci_high"]] == 0).all().all()
    assert len(per_class) == 3 * (len(CLASSES) + 1)
    assert (per_class["test_images_with_class"] == [30, 30, 22] * 3).all()  # class "b" absent from every 4th image
    # One family over every (configuration, class) comparison.
    np.testing.assert_allclose(per_class["p_holm"], holm(per_class["p_value"].to_numpy()))


def test_seeds_are_unpaired_and_seed_sets_may_differ(tmp_path):
    """Which seed number a run had does not matter across configurations; unequal seed sets are compared as such."""
    rng = np.random.default_rng(4)
    ids = np.arange(40)
    runs = [random_confusions(rng, 1, 40, noise=n)[0] for n in (0.05, 0.3, 0.1, 0.15, 0.2)]
    base = [write_run(tmp_path / "x", REFERENCE, s, 0.3, runs[s], ids) for s in (0, 1)]
    other = [write_run(tmp_path / "x", "resnet50-cross_entropy-uniform", s, 0.4, runs[2 + s], ids) for s in (0, 1, 2)]
    relabelled = [write_run(tmp_path / "y", "resnet50-cross_entropy-uniform", s, 0.4, runs[2 + i], ids)
                  for i, s in enumerate((7, 3, 5))]
    table = compare_folders(base + other)[0].set_index("variant")
    again = compare_folders(base + relabelled)[0].set_index("variant")
    columns = ["test_miou", "test_miou_ci_low", "delta_miou", "delta_ci_low", "delta_ci_high", "p_value"]
    pd.testing.assert_series_equal(table.loc["resnet50-cross_entropy-uniform", columns],
                                   again.loc["resnet50-cross_entropy-uniform", columns])
    row = table.loc["resnet50-cross_entropy-uniform"]
    assert row["seeds"] == 3 and table.loc[REFERENCE, "seeds"] == 2
    assert row["seeds_to_detect_0.01"] >= row["seeds_to_detect_0.02"] or np.isnan(row["seeds_to_detect_0.01"])


def test_identical_configurations_differ_by_exactly_zero(tmp_path):
    rng = np.random.default_rng(4)
    ids = np.arange(40)
    per_seed = [random_confusions(rng, 1, 40, noise=n)[0] for n in (0.05, 0.3)]
    folders = [write_run(tmp_path, REFERENCE, s, 0.3, per_seed[s], ids) for s in (0, 1)]
    folders += [write_run(tmp_path, "resnet50-cross_entropy-uniform", s, 0.4, per_seed[s][::-1], ids[::-1])
                for s in (1, 0)]  # listed seed 1 first, images in reverse order
    table, per_class = compare_folders(folders)
    twin = table.set_index("variant").loc["resnet50-cross_entropy-uniform"]
    assert twin["delta_miou"] == 0 and twin["p_value"] == pytest.approx(1.0) and not twin["significant"]
    assert twin["delta_ci_low"] < 0 < twin["delta_ci_high"]  # the seeds differ, so the difference is uncertain
    assert (per_class.loc[per_class["variant"] == "resnet50-cross_entropy-uniform", "delta_iou"] == 0).all()


def test_a_class_never_predicted_is_flagged_not_given_a_zero_width_interval(tmp_path):
    rng = np.random.default_rng(6)
    ids = np.arange(30)
    blind = random_confusions(rng, 2, 30)
    blind[..., 0] += blind[..., 2]  # every pixel of class "b" (index 2) predicted as background instead
    blind[..., 2] = 0
    folders = [write_run(tmp_path, REFERENCE, s, 0.3, random_confusions(rng, 1, 30)[0], ids) for s in (0, 1)]
    folders += [write_run(tmp_path, "resnet50-cross_entropy-uniform", s, 0.4, blind[s], ids) for s in (0, 1)]
    table, per_class = compare_folders(folders)
    row = per_class.set_index(["variant", "class"]).loc[("resnet50-cross_entropy-uniform", "b")]
    assert row["never_predicted"] and row["test_iou"] == 0
    assert np.isnan(row["test_iou_ci_low"]) and np.isnan(row["test_iou_ci_high"])
    assert row["delta_iou"] < 0 and row["delta_ci_low"] < row["delta_ci_high"]  # the reference's spread remains
    assert not per_class["never_predicted"].drop(index=per_class.index[per_class["class"] == "b"]).any()
    html = tmp_path / "comparison.html"
    write_comparison(table, per_class, REFERENCE, tmp_path / "c.csv", html, tmp_path / "p.csv")
    text = html.read_text()
    assert "never predicted" in text and "exploratory" in text
    assert all(note.split(":")[0] in text for note in table["power_note"])
    power_curves(table, REFERENCE, tmp_path / "power.png")
    assert (tmp_path / "power.png").stat().st_size > 10_000
    # When the reference never predicts "b" either, the difference is exactly 0: no interval and no test.
    both = [write_run(tmp_path / "both", REFERENCE, s, 0.3, blind[s], ids) for s in (0, 1)]
    both += [write_run(tmp_path / "both", "resnet50-cross_entropy-uniform", s, 0.4, blind[s][::-1], ids[::-1])
             for s in (0, 1)]
    twin = compare_folders(both)[1].set_index(["variant", "class"]).loc[("resnet50-cross_entropy-uniform", "b")]
    assert twin["delta_iou"] == 0 and np.isnan(twin["delta_ci_low"]) and np.isnan(twin["p_value"])


def test_bad_input_names_the_file_and_the_fix(disagreeing_runs):
    root, folders = disagreeing_runs
    with pytest.raises(ValueError, match="evaluate.reference 'resnet50-weighted_cross_entropy-uniform' was not"):
        compare_folders(folders, reference="resnet50-weighted_cross_entropy-uniform")
    with pytest.raises(ValueError, match="3 classes, background included, and the config names 3"):
        compare_folders(folders, classes=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"metrics.json and .*metrics.json are both .* seed 0: list each run once"):
        compare_folders(folders + folders[:1])
    rng = np.random.default_rng(0)
    other_images = write_run(root / "ids", "resnet50-cross_entropy-uniform", 0, 0.5, random_confusions(rng, 1, 30)[0],
                             np.arange(30))
    other_classes = write_run(root / "classes", "resnet50-cross_entropy-uniform", 0, 0.5,
                              random_confusions(rng, 1, 30, classes=4)[0], np.arange(100, 130))
    for other in (other_images, other_classes):
        with pytest.raises(ValueError, match="holds other test images or classes than .*re-run evaluate on the same"):
            compare_folders([*folders[:4], other])
    npz = folders[4] / "evaluation/per_image_confusion.npz"
    np.savez(npz, ids=np.arange(30))
    with pytest.raises(ValueError, match="per_image_confusion.npz lacks confusion, image_id: .*delete it and run"):
        compare_folders(folders)
    npz.unlink()
    with pytest.raises(FileNotFoundError, match="per_image_confusion.npz: missing; run the evaluate rule"):
        compare_folders(folders)
    one_image = [write_run(root / "one", REFERENCE, s, 0.3, random_confusions(rng, 1, 1)[0], np.arange(1))
                 for s in (0, 1)]
    with pytest.raises(ValueError, match="the test split has 1 image"):
        compare_folders(one_image)


def test_holm_by_hand():
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max.
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, 0.005])), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([np.nan, 0.2, 0.5])), [np.nan, 0.4, 0.5])
    np.testing.assert_allclose(holm(np.array([0.6, 0.7])), [1.0, 1.0])


STUDIES, EFFECT_STUDIES = 300, 150


def at_most_five_percent(rate: float, trials: int) -> bool:
    """A rate whose truth is at most 0.05, measured on ``trials``: within three Monte Carlo standard errors."""
    return rate <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)


@pytest.mark.slow
@pytest.mark.parametrize("arm", TESTED_ARMS, ids=lambda arm: f"{arm.name}, {arm.seeds} seeds")
def test_calibration_on_simulated_studies_with_known_truth(arm):
    """The real comparison code on simulated studies: wrong claims at most at the stated 5%, a large effect found.

    (With 2 or 3 seeds whose spread dominates, the method is conservative, at about 0.03: see docs/study.md.
    The power assertion keeps a method that never finds anything from passing.)
    """
    result = calibrate(arm, STUDIES, EFFECT_STUDIES)
    assert at_most_five_percent(result.false_positive, STUDIES), result
    assert at_most_five_percent(result.difference_missed, STUDIES), result
    assert at_most_five_percent(result.interval_missed, STUDIES), result
    assert at_most_five_percent(result.class_false_positive, STUDIES * 4), result  # 4 classes a study
    assert at_most_five_percent(result.effect_missed, EFFECT_STUDIES), result
    assert result.power >= 0.8, result


def test_summary_follows_validation_not_test(disagreeing_runs, tmp_path):
    _, folders = disagreeing_runs
    out = tmp_path / "tables"
    summary = write_tables([f / "evaluation/metrics.json" for f in folders], [f / "training.json" for f in folders],
                           CLASSES, out / "s.csv", out / "s.html", out / "p.csv", out / "p.html")
    assert list(summary["val_miou"]) == sorted(summary["val_miou"], reverse=True)
    assert summary.loc[0, "variant"] == "resnet50-focal_tversky-oversample"
    html = (out / "s.html").read_text()
    highlighted = html.split("#fff3b0")[0]  # the style rule of the highlighted row comes first
    assert "row0" in highlighted.rsplit("#T_", 1)[-1]
    assert list(pd.read_csv(out / "p.csv")["variant"]) == list(summary["variant"])
