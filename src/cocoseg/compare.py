"""Which variant is better, how sure, and how many seeds it would take to be surer.

Reads every run's ``evaluation/metrics.json``, ``training.json`` and ``per_image_confusion.npz``
(a run is one variant trained with one seed) and writes, one row per configuration sorted by
validation mIoU: the test mIoU with its spread over seeds and its 95% interval; the difference
from a reference configuration with its interval, p-value and Holm-adjusted p-value; and a power
report (the seed SD, the test-image SE, the smallest difference these seeds and images detect, and
the seeds that 0.01 and 0.02 mIoU would take). Then the same per class, as one exploratory family.
``cocoseg.stats`` holds the statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cocoseg.stats import (
    ALPHA,
    Configuration,
    Inference,
    detectable_difference,
    difference,
    holm,
    inference,
    seeds_needed,
)

MIOU, MIOU_OBJECTS = 0, 1  # positions in cocoseg.stats.statistics; the classes' IoU follow
PLANNED_DELTAS = (0.01, 0.02)
MOST_SEEDS = 100


def read_runs(metrics_paths: list[str | Path], training_paths: list[str | Path]) -> pd.DataFrame:
    """One row per run (variant, seed): validation and test mIoU, and what it trained on."""
    rows, seen = [], {}
    for metrics_path, training_path in zip(metrics_paths, training_paths):
        metrics, training = json.loads(Path(metrics_path).read_text()), json.loads(Path(training_path).read_text())
        run = (metrics["variant"], metrics["seed"])
        if run in seen:
            raise ValueError(f"{metrics_path} and {seen[run]} are both {run[0]} seed {run[1]}: list each run once")
        seen[run] = metrics_path
        rows.append({"variant": metrics["variant"], "seed": metrics["seed"], "val_miou": metrics["val"]["miou"],
                     "test_miou": metrics["test"]["miou"], "steps": training["steps"], "images": training["images"],
                     "train_minutes": training["train_seconds"] / 60})
    return pd.DataFrame(rows)


def _read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: missing; run the evaluate rule for this run (snakemake {path}) before "
                                "comparing")
    with np.load(path) as data:
        missing = {"image_id", "confusion"} - set(data.files)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(sorted(missing))}: it was not written by this project's "
                             f"evaluate; delete it and run snakemake {path}")
        return data["image_id"], data["confusion"]


def read_confusions(paths: list[str | Path], variants: list[str]) -> dict[str, np.ndarray]:
    """Per-image test confusions stacked per configuration (S x N x C x C), checked to cover the same images."""
    stacked: dict[str, list[np.ndarray]] = {}
    reference_ids, reference_path, reference_shape = None, None, None
    for path, variant in zip(paths, variants):
        image_ids, confusion = _read_npz(path)
        order = np.argsort(image_ids, kind="stable")  # every run's images in one order, paired image by image
        if reference_ids is None:
            reference_ids, reference_path, reference_shape = image_ids[order], path, confusion.shape[1:]
        elif not np.array_equal(image_ids[order], reference_ids) or confusion.shape[1:] != reference_shape:
            raise ValueError(f"{path} holds other test images or classes than {reference_path}; re-run evaluate on "
                             "the same manifest and classes for every variant")
        stacked.setdefault(variant, []).append(confusion[order])
    return {variant: np.stack(matrices) for variant, matrices in stacked.items()}


def _interval(result: Inference, k: int) -> tuple[float, float]:
    return float(result.low[k]), float(result.high[k])


def _difference_columns(result: Inference | None, tested: bool) -> dict[str, float]:
    """The difference from the reference; no p-value where a side has one seed (``tested`` False): its test
    would leave out the seeds' spread and could not hold its level."""
    if result is None:  # the reference against itself
        return {"delta_miou": 0.0, "delta_se": 0.0, "delta_image_se": 0.0, "delta_seed_df": np.nan, "delta_ci_low": 0.0,
                "delta_ci_high": 0.0, "p_value": np.nan}
    low, high = _interval(result, MIOU)
    return {"delta_miou": float(result.estimate[MIOU]), "delta_se": float(result.se[MIOU]),
            "delta_image_se": float(np.sqrt(result.image_var[MIOU])), "delta_seed_df": float(result.seed_df[MIOU]),
            "delta_ci_low": low, "delta_ci_high": high, "p_value": float(result.p_value[MIOU]) if tested else np.nan}


def _power_columns(configuration: Configuration, reference: Configuration, result: Inference | None) -> dict:
    """The smallest difference detectable at 80% power now, and the seeds per configuration 0.01 and 0.02 need."""
    columns = {"detectable_delta": np.nan, **{f"seeds_to_detect_{d}": np.nan for d in PLANNED_DELTAS}}
    if result is None or configuration.seeds < 2 or reference.seeds < 2:
        return columns
    seed_a, seed_r = configuration.seed_var[MIOU], reference.seed_var[MIOU]
    image = float(result.image_var[MIOU])
    columns["detectable_delta"] = float(detectable_difference(seed_a, configuration.seeds, seed_r, reference.seeds,
                                                              image))
    needed = seeds_needed(np.array(PLANNED_DELTAS), seed_a, seed_r, image, MOST_SEEDS)
    columns.update({f"seeds_to_detect_{delta}": float(seeds) for delta, seeds in zip(PLANNED_DELTAS, needed)})
    return columns


def _seeds(count: int) -> str:
    return f"{count} seed" + ("" if count == 1 else "s")


def power_note(row: pd.Series, reference: str) -> str:
    """One sentence a reader can act on: what this comparison can detect, and what more seeds would buy."""
    name, seeds = row["variant"], int(row["seeds"])
    if name == reference:
        return (f"{name} is the reference: {_seeds(seeds)}, seed SD {row['test_miou_sd']:.3f}, "
                f"test-image SE {row['test_miou_image_se']:.3f}.")
    if not np.isfinite(row["detectable_delta"]):
        return (f"{name}: with one seed (here or in the reference) the seed spread is unknown, so its interval "
                "covers the test images only and no test is made; train 2 or more seeds of both to compare them.")
    now = (f"{name}: {_seeds(seeds)} (seed SD {row['test_miou_sd']:.3f}; test-image SE of the difference "
           f"{row['delta_image_se']:.3f}) detect a difference of {row['detectable_delta']:.3f} mIoU with 80% power")
    needed = {delta: row[f"seeds_to_detect_{delta}"] for delta in PLANNED_DELTAS}
    order = sorted(needed, reverse=True)
    parts = [f"{delta:g} would take {needed[delta]:.0f} seeds per configuration" for delta in order
             if np.isfinite(needed[delta])]
    out_of_reach = [f"{delta:g}" for delta in order if not np.isfinite(needed[delta])]
    if out_of_reach:
        parts.append(f"{' and '.join(out_of_reach)} {'is' if len(out_of_reach) == 1 else 'are'} out of reach of up "
                     f"to {MOST_SEEDS} seeds on these {row['test_images']} test images, whose own error calls for "
                     "more test images")
    return f"{now}; {'; '.join(parts)}."


def _with_holm(frame: pd.DataFrame) -> pd.DataFrame:
    """Holm over every comparison in the frame (the reference's own rows have no p-value); significant at 5%."""
    frame["p_holm"] = holm(frame["p_value"].to_numpy())
    frame["significant"] = frame["p_holm"] < ALPHA
    return frame


@dataclass(frozen=True)
class Result:
    """One configuration's runs, its own interval, and its difference from the reference (None for the reference)."""

    configuration: Configuration
    own: Inference
    difference: Inference | None

    @classmethod
    def of(cls, configuration: Configuration, reference: Configuration | None) -> Result:
        delta = None if reference is None else difference(configuration, reference)
        return cls(configuration, inference(configuration), delta)


def configuration_row(variant: str, group: pd.DataFrame, result: Result, reference: Configuration) -> dict:
    configuration, own = result.configuration, result.own
    low, high = _interval(own, MIOU)
    objects_low, objects_high = _interval(own, MIOU_OBJECTS)
    return {
        "variant": variant, "seeds": configuration.seeds, "seed_values": " ".join(map(str, group["seed"])),
        "test_images": configuration.images, "val_miou": group["val_miou"].mean(),
        "test_miou": float(own.estimate[MIOU]), "test_miou_sd": float(configuration.seed_sd[MIOU]),
        "test_miou_per_seed": " ".join(f"{value:.4f}" for value in configuration.values[:, MIOU]),
        "test_miou_image_se": float(np.sqrt(own.image_var[MIOU])), "test_miou_se": float(own.se[MIOU]),
        "test_miou_ci_low": low, "test_miou_ci_high": high,
        "covers": "test images and seeds" if configuration.seeds > 1 else "test images only (one seed)",
        "test_miou_objects": float(own.estimate[MIOU_OBJECTS]), "test_miou_objects_ci_low": objects_low,
        "test_miou_objects_ci_high": objects_high,
        **_difference_columns(result.difference, min(configuration.seeds, reference.seeds) > 1),
        **_power_columns(configuration, reference, result.difference),
        "steps": group["steps"].mean(), "images": group["images"].mean(),
        "train_minutes": group["train_minutes"].mean(),
    }


def comparison_table(runs: pd.DataFrame, results: dict[str, Result], reference: str) -> pd.DataFrame:
    """One row per configuration, sorted by validation mIoU (the choice is never made on test)."""
    base = results[reference].configuration
    rows = [configuration_row(variant, group.sort_values("seed"), results[variant], base)
            for variant, group in runs.groupby("variant", sort=False)]
    frame = pd.DataFrame(rows).sort_values("val_miou", ascending=False, kind="stable").reset_index(drop=True)
    frame = _with_holm(frame)
    frame["power_note"] = [power_note(row, reference) for _, row in frame.iterrows()]
    return frame


def per_class_table(results: dict[str, Result], classes: list[str], order: list[str]) -> pd.DataFrame:
    """One row per configuration and class: test IoU, its interval, the difference from the reference; Holm over
    every (configuration, class) comparison at once. Exploratory: the per-class family is large."""
    rows = []
    reference = next(result.configuration for result in results.values() if result.difference is None)
    for variant in order:
        result = results[variant]
        configuration, own, delta = result.configuration, result.own, result.difference
        tested = min(configuration.seeds, reference.seeds) > 1
        for c, name in enumerate(["background", *classes]):
            k = 2 + c
            never = bool(configuration.never_predicted[c])
            # A zero-width interval (never predicted, or the same IoU everywhere) would look certain: none is given.
            own_span = (np.nan, np.nan) if never or own.se[k] == 0 else (own.low[k], own.high[k])
            if delta is None:
                delta_row = {"delta_iou": 0.0, "delta_ci_low": 0.0, "delta_ci_high": 0.0, "p_value": np.nan}
            else:
                certain = delta.se[k] == 0  # e.g. neither configuration ever predicts the class
                delta_row = {"delta_iou": delta.estimate[k],
                             "delta_ci_low": np.nan if certain else delta.low[k],
                             "delta_ci_high": np.nan if certain else delta.high[k],
                             "p_value": delta.p_value[k] if tested else np.nan}
            rows.append({"variant": variant, "class": name,
                         "test_images_with_class": int(configuration.images_with_class[c]),
                         "test_iou": own.estimate[k], "never_predicted": never, "test_iou_ci_low": own_span[0],
                         "test_iou_ci_high": own_span[1], **delta_row})
    return _with_holm(pd.DataFrame(rows))


def compare_confusions(runs: pd.DataFrame, confusions: dict[str, np.ndarray], classes: list[str],
                       reference: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table and its per-class companion from runs already read (see ``compare``)."""
    if reference not in confusions:
        raise ValueError(f"evaluate.reference {reference!r} was not evaluated; use one of "
                         f"{', '.join(confusions)} (or add it to the grid)")
    _, images, num_classes, _ = next(iter(confusions.values())).shape
    if num_classes != len(classes) + 1:
        raise ValueError(f"the confusion matrices have {num_classes} classes, background included, and the config "
                         f"names {len(classes)} ({', '.join(classes)}): compare with the config the runs were "
                         "evaluated with")
    if images < 2:
        raise ValueError(f"the test split has {images} image(s): a comparison needs at least 2")
    configurations = {variant: Configuration.from_confusions(stack) for variant, stack in confusions.items()}
    base = configurations[reference]
    results = {variant: Result.of(c, None if variant == reference else base) for variant, c in configurations.items()}
    table = comparison_table(runs, results, reference)
    return table, per_class_table(results, classes, list(table["variant"]))


def compare(metrics_paths: list[str | Path], training_paths: list[str | Path], confusion_paths: list[str | Path],
            classes: list[str], reference: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The comparison table and its per-class companion (see the module's text)."""
    runs = read_runs(metrics_paths, training_paths).assign(confusion_path=[str(p) for p in confusion_paths])
    runs = runs.sort_values(["variant", "seed"], kind="stable")
    confusions = read_confusions(list(runs["confusion_path"]), list(runs["variant"]))
    return compare_confusions(runs, confusions, classes, reference)
