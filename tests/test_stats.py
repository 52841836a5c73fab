"""Bootstrap intervals, paired comparisons, Holm's adjustment, and tables ranked by validation."""

import json

import numpy as np
import pandas as pd
import pytest

from cocoseg.compare import compare
from cocoseg.metrics import metrics_from_confusion
from cocoseg.plots import write_tables
from cocoseg.stats import bootstrap, bootstrap_p_value, draw_image_counts, holm, percentile_interval

CLASSES = ["a", "b"]


def random_confusions(rng, seeds, images, classes=3, scale=50, noise=0.1):
    """Per-image confusions with a strong diagonal (off it ``noise`` times as many), some classes absent."""
    confusion = rng.poisson(scale * noise, size=(seeds, images, classes, classes))
    confusion[..., np.arange(classes), np.arange(classes)] += rng.poisson(scale, size=(seeds, images, classes))
    confusion[:, ::4, 2, :] = 0  # class 2 absent from every 4th image
    return confusion.astype(np.int64)


def test_bootstrap_is_reproducible_and_its_interval_holds_the_point_estimate():
    confusions = {"x": random_confusions(np.random.default_rng(0), 2, 40)}
    first, again = bootstrap(confusions, 500, seed=3)["x"], bootstrap(confusions, 500, seed=3)["x"]
    other = bootstrap(confusions, 500, seed=4)["x"]
    np.testing.assert_array_equal(first.miou_replicates, again.miou_replicates)
    np.testing.assert_array_equal(first.iou_replicates, again.iou_replicates)
    assert not np.array_equal(first.miou_replicates, other.miou_replicates)
    low, high = percentile_interval(first.miou_replicates)
    assert low < first.miou < high
    low, high = percentile_interval(first.iou_replicates)
    assert np.all((low <= first.iou) & (first.iou <= high))


def test_one_seed_is_exactly_the_image_bootstrap_checked_against_the_metrics_module():
    confusion = random_confusions(np.random.default_rng(1), 1, 30)
    result = bootstrap({"x": confusion}, 200, seed=5)["x"]
    counts = draw_image_counts(np.random.default_rng(5), 200, 30)  # the draws bootstrap() makes first
    for b in range(200):
        resampled = np.tensordot(counts[b], confusion[0], axes=1)
        expected = metrics_from_confusion(resampled)
        assert result.miou_replicates[b] == pytest.approx(expected["miou"], rel=1e-12)
        assert result.miou_objects_replicates[b] == pytest.approx(expected["miou_objects"], rel=1e-12)
        np.testing.assert_allclose(result.iou_replicates[b], expected["iou"], rtol=1e-12)
    assert result.miou == pytest.approx(metrics_from_confusion(confusion[0].sum(0))["miou"], rel=1e-12)


def test_the_second_level_resamples_seeds():
    # Every image alike within a seed, so image draws change nothing: a replicate is the mean of two
    # seeds drawn with replacement: both seed 0, one of each, or both seed 1 (1/4, 1/2, 1/4).
    perfect, poor = np.diag([10, 10, 10]), np.full((3, 3), 5) + np.diag([5, 5, 5])
    confusions = np.stack([np.repeat(poor[None], 12, 0), np.repeat(perfect[None], 12, 0)])
    result = bootstrap({"x": confusions}, 4000, seed=0)["x"]
    low_value = metrics_from_confusion(poor)["miou"]
    values, counts = np.unique(np.round(result.miou_replicates, 9), return_counts=True)
    np.testing.assert_allclose(values, np.round([low_value, (low_value + 1) / 2, 1.0], 9))
    np.testing.assert_allclose(counts / 4000, [0.25, 0.5, 0.25], atol=0.03)
    assert result.miou == pytest.approx((low_value + 1) / 2)


def test_interval_covers_the_true_miou_at_about_its_level():
    # A population of 20,000 images whose total confusion gives the true mIoU; each repetition
    # evaluates 150 images drawn from it. The percentile interval of a smooth statistic covers at
    # close to 95%; with 300 repetitions the binomial standard error is 1.3 points, so a correct
    # bootstrap lands in 90-99% (an interval from too few resamples, or a wrong resampling unit such
    # as pixels, falls far outside: see the second assertion).
    rng = np.random.default_rng(11)
    population = random_confusions(rng, 1, 20_000, scale=30)[0]
    truth = metrics_from_confusion(population.sum(0))["miou"]
    covered, too_narrow = 0, 0
    for repetition in range(300):
        sample = population[rng.integers(0, len(population), 150)]
        estimate = bootstrap({"x": sample[None]}, 400, seed=repetition)["x"]
        low, high = percentile_interval(estimate.miou_replicates)
        covered += low <= truth <= high
        width = (high - low) / 10  # an interval a tenth as wide must miss most of the time
        too_narrow += estimate.miou - width / 2 <= truth <= estimate.miou + width / 2
    assert 0.90 <= covered / 300 <= 0.99
    assert too_narrow / 300 < 0.3


def test_bootstrap_p_value_and_holm_by_hand():
    assert bootstrap_p_value(np.zeros(100)) == 1.0
    # 3 of 99 differences at or below 0: p = 2 * (3 + 1) / (99 + 1) = 0.08
    differences = np.r_[np.full(96, 0.5), [-0.1, -0.2, 0.0]]
    assert bootstrap_p_value(differences) == pytest.approx(0.08)
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max.
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03, 0.005])), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([np.nan, 0.2, 0.5])), [np.nan, 0.4, 0.5])
    np.testing.assert_allclose(holm(np.array([0.6, 0.7])), [1.0, 1.0])


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
    """Three variants whose validation order (b, c, a) is not their test order (a, c, b); a has two seeds."""
    rng = np.random.default_rng(2)
    ids = np.arange(100, 130)
    good, middling, poor = (random_confusions(rng, 1, 30, noise=n)[0] for n in (0.02, 0.1, 0.4))
    folders = [write_run(tmp_path, "mobilenet_v3_large-cross_entropy-uniform", 0, 0.30, good, ids),
               write_run(tmp_path, "mobilenet_v3_large-cross_entropy-uniform", 1, 0.32, good[::-1], ids[::-1]),
               write_run(tmp_path, "resnet50-focal_tversky-oversample", 0, 0.60, poor, ids),
               write_run(tmp_path, "resnet50-cross_entropy-uniform", 0, 0.50, middling, ids)]
    return tmp_path, folders


def test_comparison_ranks_by_validation_and_pairs_with_the_reference(disagreeing_runs):
    _, folders = disagreeing_runs
    reference = "mobilenet_v3_large-cross_entropy-uniform"
    table, per_class = compare([f / "evaluation/metrics.json" for f in folders], [f / "training.json" for f in folders],
                               [f / "evaluation/per_image_confusion.npz" for f in folders], CLASSES, reference, 500)
    assert list(table["variant"]) == ["resnet50-focal_tversky-oversample", "resnet50-cross_entropy-uniform", reference]
    assert table["test_miou"].is_monotonic_increasing  # test disagrees with validation, and does not decide
    ref = table.set_index("variant").loc[reference]
    assert ref["seeds"] == 2 and ref["seed_values"] == "0 1"
    assert (ref["delta_miou"], ref["delta_ci_low"], ref["delta_ci_high"]) == (0, 0, 0)
    assert np.isnan(ref["p_value"]) and not ref["significant"]
    # Two seeds of identical predictions (listed in another order): sd 0, and the per-image pairing held.
    assert ref["test_miou_sd"] == pytest.approx(0)
    poor = table.set_index("variant").loc["resnet50-focal_tversky-oversample"]
    assert poor["delta_ci_high"] < 0 and poor["significant"]
    assert poor["p_holm"] == pytest.approx(min(1, 2 * poor["p_value"]))  # smallest of two comparisons
    assert poor["test_miou"] == pytest.approx(
        json.loads((folders[2] / "evaluation/metrics.json").read_text())["test"]["miou"])
    reference_rows = per_class[per_class["variant"] == reference]
    assert (reference_rows[["delta_iou", "delta_ci_low", "delta_ci_high"]] == 0).all().all()
    assert len(per_class) == 3 * (len(CLASSES) + 1)
    for _, rows in per_class.groupby("class"):  # Holm within each class, over the configurations
        np.testing.assert_allclose(rows["p_holm"], holm(rows["p_value"].to_numpy()))


def test_configurations_share_the_image_and_seed_draws(tmp_path):
    """Two configurations with the same predictions differ by exactly 0 in every replicate, whatever order
    their runs are listed in: the images drawn, and the seeds drawn (paired by seed), are the same."""
    rng = np.random.default_rng(4)
    ids = np.arange(40)
    per_seed = [random_confusions(rng, 1, 40, noise=n)[0] for n in (0.05, 0.3)]
    folders = [write_run(tmp_path, "mobilenet_v3_large-cross_entropy-uniform", s, 0.3, per_seed[s], ids)
               for s in (0, 1)]
    folders += [write_run(tmp_path, "resnet50-cross_entropy-uniform", s, 0.4, per_seed[s][::-1], ids[::-1])
                for s in (1, 0)]  # listed seed 1 first, images in reverse order
    table, per_class = compare([f / "evaluation/metrics.json" for f in folders], [f / "training.json" for f in folders],
                               [f / "evaluation/per_image_confusion.npz" for f in folders], CLASSES,
                               "mobilenet_v3_large-cross_entropy-uniform", 300)
    twin = table.set_index("variant").loc["resnet50-cross_entropy-uniform"]
    assert (twin["delta_miou"], twin["delta_ci_low"], twin["delta_ci_high"]) == (0, 0, 0)
    assert twin["p_value"] == 1.0 and not twin["significant"]
    assert twin["test_miou_ci_low"] < twin["test_miou_ci_high"]  # the replicates themselves do vary
    twin_rows = per_class[per_class["variant"] == "resnet50-cross_entropy-uniform"]
    assert (twin_rows[["delta_iou", "delta_ci_low", "delta_ci_high"]] == 0).all().all()


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
