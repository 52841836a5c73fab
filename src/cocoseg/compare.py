"""Which variant is better, and how sure: per-configuration aggregates and paired comparisons.

Reads every run's ``evaluation/metrics.json``, ``training.json`` and ``per_image_confusion.npz``
(a run is one variant trained with one seed) and writes, one row per configuration sorted by
validation mIoU, the test mIoU with its spread over seeds and bootstrap interval, and the paired
difference from a reference configuration with its interval, p-value and Holm-adjusted p-value;
then the same per class. ``cocoseg.stats`` holds the statistics.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from cocoseg.stats import CONFIDENCE, Estimate, bootstrap, bootstrap_p_value, holm, percentile_interval

ALPHA = 1 - CONFIDENCE


def read_runs(metrics_paths: list[str | Path], training_paths: list[str | Path]) -> pd.DataFrame:
    """One row per run (variant, seed): validation and test mIoU, and what it trained on."""
    rows = []
    for metrics_path, training_path in zip(metrics_paths, training_paths):
        metrics, training = json.loads(Path(metrics_path).read_text()), json.loads(Path(training_path).read_text())
        rows.append({"variant": metrics["variant"], "seed": metrics["seed"], "val_miou": metrics["val"]["miou"],
                     "test_miou": metrics["test"]["miou"], "steps": training["steps"], "images": training["images"],
                     "train_minutes": training["train_seconds"] / 60})
    return pd.DataFrame(rows)


def read_confusions(paths: list[str | Path], variants: list[str]) -> dict[str, np.ndarray]:
    """Per-image test confusions stacked per configuration (S x N x C x C), checked to cover the same images."""
    stacked: dict[str, list[np.ndarray]] = {}
    reference_ids, reference_path = None, None
    for path, variant in zip(paths, variants):
        with np.load(path) as data:
            image_ids, confusion = data["image_id"], data["confusion"]
        order = np.argsort(image_ids, kind="stable")  # every run's images in one order: draws are shared
        if reference_ids is None:
            reference_ids, reference_path = image_ids[order], path
        elif not np.array_equal(image_ids[order], reference_ids):
            raise ValueError(f"{path} holds other test images than {reference_path}; re-run evaluate on the same "
                             "manifest for every variant")
        stacked.setdefault(variant, []).append(confusion[order])
    return {variant: np.stack(matrices) for variant, matrices in stacked.items()}


def _interval(replicates: np.ndarray) -> tuple[float, float]:
    low, high = percentile_interval(replicates)
    return float(low), float(high)


def _difference(estimate: Estimate, reference: Estimate) -> dict[str, float]:
    differences = estimate.miou_replicates - reference.miou_replicates
    low, high = _interval(differences)
    return {"delta_miou": estimate.miou - reference.miou, "delta_ci_low": low, "delta_ci_high": high,
            "p_value": float(bootstrap_p_value(differences))}


def _with_holm(frame: pd.DataFrame, is_reference: pd.Series, family: str | None = None) -> pd.DataFrame:
    """Holm over the comparisons with the reference (its own rows are none), within each ``family`` group
    when given; significant at the 5% level."""
    frame["p_value"] = frame["p_value"].where(~is_reference)
    groups = frame.groupby(family, sort=False)["p_value"] if family else [(None, frame["p_value"])]
    frame["p_holm"] = np.nan
    for _, p in groups:
        frame.loc[p.index, "p_holm"] = holm(p.to_numpy())
    frame["significant"] = frame["p_holm"] < ALPHA
    return frame


def comparison_table(runs: pd.DataFrame, estimates: dict[str, Estimate], reference: str) -> pd.DataFrame:
    """One row per configuration, sorted by validation mIoU (the choice is never made on test)."""
    if reference not in estimates:
        raise ValueError(f"evaluate.reference {reference!r} was not evaluated; use one of {', '.join(estimates)}")
    rows = []
    for variant, group in runs.groupby("variant", sort=False):
        estimate, group = estimates[variant], group.sort_values("seed")
        low, high = _interval(estimate.miou_replicates)
        objects_low, objects_high = _interval(estimate.miou_objects_replicates)
        rows.append({
            "variant": variant, "seeds": len(group), "seed_values": " ".join(map(str, group["seed"])),
            "val_miou": group["val_miou"].mean(), "test_miou": estimate.miou,
            "test_miou_sd": group["test_miou"].std(ddof=1) if len(group) > 1 else np.nan,
            "test_miou_per_seed": " ".join(f"{value:.4f}" for value in group["test_miou"]),
            "test_miou_ci_low": low, "test_miou_ci_high": high,
            "test_miou_objects": estimate.miou_objects, "test_miou_objects_ci_low": objects_low,
            "test_miou_objects_ci_high": objects_high,
            **_difference(estimate, estimates[reference]),
            "steps": group["steps"].mean(), "images": group["images"].mean(),
            "train_minutes": group["train_minutes"].mean(),
        })
    frame = pd.DataFrame(rows).sort_values("val_miou", ascending=False, kind="stable").reset_index(drop=True)
    return _with_holm(frame, frame["variant"] == reference)


def per_class_table(estimates: dict[str, Estimate], reference: str, classes: list[str],
                    order: list[str]) -> pd.DataFrame:
    """One row per configuration and class: test IoU, its interval, the paired difference from the reference,
    with Holm's adjustment over the configurations for each class."""
    names = ["background", *classes]
    base = estimates[reference]
    rows = []
    for variant in order:
        estimate = estimates[variant]
        low, high = percentile_interval(estimate.iou_replicates)
        differences = estimate.iou_replicates - base.iou_replicates
        delta_low, delta_high = percentile_interval(differences)
        p = bootstrap_p_value(differences)
        for c, name in enumerate(names):
            rows.append({"variant": variant, "class": name, "test_iou": estimate.iou[c], "test_iou_ci_low": low[c],
                         "test_iou_ci_high": high[c], "delta_iou": estimate.iou[c] - base.iou[c],
                         "delta_ci_low": delta_low[c], "delta_ci_high": delta_high[c], "p_value": p[c]})
    frame = pd.DataFrame(rows)
    # One family per class: the configurations against the reference on that class. A family of every
    # class at once (66 in the study) would put even the smallest bootstrap p-value, 2 / (B + 1),
    # above 0.05 after Holm's factor.
    return _with_holm(frame, frame["variant"] == reference, family="class")


def compare(metrics_paths: list[str | Path], training_paths: list[str | Path], confusion_paths: list[str | Path],
            classes: list[str], reference: str, resamples: int = 2000,
            seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table and its per-class companion (see the module's text)."""
    runs = read_runs(metrics_paths, training_paths).assign(confusion_path=[str(p) for p in confusion_paths])
    # Stacked by seed, so that runs of equally many seeds pair seed with seed in the two-level bootstrap.
    runs = runs.sort_values(["variant", "seed"], kind="stable")
    estimates = bootstrap(read_confusions(list(runs["confusion_path"]), list(runs["variant"])), resamples, seed)
    table = comparison_table(runs, estimates, reference)
    return table, per_class_table(estimates, reference, classes, list(table["variant"]))
