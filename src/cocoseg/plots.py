"""Result tables and figures across variants, for the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from cocoseg.data.masks import palette
from cocoseg.data.split import split_rows
from cocoseg.io import read_mask, read_rgb, save_figure, write_csv, write_text
from cocoseg.stats import detectable_difference
from cocoseg.variants import parse_variant


def _read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def summary_tables(metrics_paths: list[str | Path], training_paths: list[str | Path],
                   classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per run, variant and seed (test metrics, selection, cost), and the per-class test IoU table."""
    rows, per_class = [], []
    for metrics_path, training_path in zip(metrics_paths, training_paths):
        metrics, training = _read_json(metrics_path), _read_json(training_path)
        variant = metrics["variant"]
        backbone, loss, sampling = parse_variant(variant)
        test = metrics["test"]
        rows.append({
            "variant": variant, "seed": metrics["seed"], "backbone": backbone, "loss": loss, "sampling": sampling,
            "val_miou": metrics["val"]["miou"], "test_miou": test["miou"], "test_miou_objects": test["miou_objects"],
            "test_mean_dice": test["mean_dice"],
            "test_pixel_accuracy": test["pixel_accuracy"], "test_mean_class_accuracy": test["mean_class_accuracy"],
            "test_fw_iou": test["fw_iou"], "best_epoch": training["best_epoch"], "epochs": training["epochs"],
            "budget": training["budget"], "steps": training["steps"], "images": training["images"],
            "train_minutes": training["train_seconds"] / 60,
            "images_per_s": training["images_per_s"], "device": training["device"],
            "precision": training["precision"], "memory_format": training["memory_format"],
        })
        per_class.append({"variant": variant, "seed": metrics["seed"],
                          **{name: test["iou"][name] for name in ("background", *classes)},
                          "mIoU": test["miou"]})
    return pd.DataFrame(rows), pd.DataFrame(per_class)


def _highlighted_html(frame: pd.DataFrame, best: int, note: str) -> str:
    numeric = frame.select_dtypes("number").columns
    styled = (frame.style.hide(axis="index")
              .format({c: "{:.3f}" for c in numeric if frame[c].dtype.kind == "f"}, na_rep="–")
              .apply(lambda row: ["font-weight: bold; background-color: #fff3b0" if row.name == best else ""
                                  for _ in row], axis=1))
    return f"<p>{note}</p>\n" + styled.to_html()


def write_tables(metrics_paths: list[str | Path], training_paths: list[str | Path], classes: list[str],
                 summary_csv: str | Path, summary_html: str | Path, per_class_csv: str | Path,
                 per_class_html: str | Path) -> pd.DataFrame:
    summary, per_class = summary_tables(metrics_paths, training_paths, classes)
    # Configurations by their mean validation mIoU over seeds (as tables/comparison ranks them), then
    # each configuration's runs by their own: the top row is that configuration's best-validation run.
    configuration_val = summary.groupby("variant")["val_miou"].transform("mean")
    summary = (summary.assign(_rank=configuration_val)
               .sort_values(["_rank", "val_miou", "seed"], ascending=[False, False, True], na_position="last")
               .drop(columns="_rank").reset_index(drop=True))
    per_class = per_class.set_index(["variant", "seed"]).loc[list(zip(summary["variant"], summary["seed"]))]
    per_class = per_class.reset_index()
    note = ("One row per training run (variant and seed), ranked by validation mIoU: variants by their mean over "
            "seeds, then each variant's runs by their own. The highlighted run is the best-validation run of the "
            "variant validation chooses; test numbers are reported for it, never used to choose. Validation and test "
            "are evaluated once with the checkpoint of the best validation mIoU, at each label mask's own "
            "resolution. mIoU averages every class, background included.")
    write_csv(summary, summary_csv)
    write_csv(per_class, per_class_csv)
    write_text(_highlighted_html(summary, 0, note), summary_html)
    write_text(_highlighted_html(per_class, 0, "Per-class IoU on the test split. " + note), per_class_html)
    return summary


def training_curves(metrics_csvs: dict[str, str | Path], path: str | Path) -> None:
    """Loss and validation mIoU per epoch of every run (``"<variant> seed <seed>"`` -> metrics.csv):
    one colour per variant, one marker per seed."""
    fig, (loss_ax, miou_ax) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    variants = sorted({run.split(" seed ")[0] for run in metrics_csvs})
    markers: dict[str, str] = {}
    for run, csv in sorted(metrics_csvs.items()):
        variant, _, seed = run.partition(" seed ")
        history = pd.read_csv(csv)
        colour = plt.cm.tab20(variants.index(variant) % 20)
        marker = markers.setdefault(seed, "os^Dv<>"[len(markers) % 7])
        loss_ax.plot(history["epoch"], history["train_loss"], color=colour, label=f"{run} train")
        loss_ax.plot(history["epoch"], history["val_loss"], color=colour, linestyle="--", label=f"{run} val")
        miou_ax.plot(history["epoch"], history["val_miou"], color=colour, marker=marker, markersize=3, label=run)
    loss_ax.set(title="Loss (solid: train, dashed: validation)", xlabel="epoch", ylabel="loss")
    miou_ax.set(title="Validation mIoU", xlabel="epoch", ylabel="mIoU")
    for ax in (loss_ax, miou_ax):
        ax.grid(alpha=0.3)
    miou_ax.legend(fontsize=6, loc="lower right", ncol=2 if len(metrics_csvs) > 12 else 1)
    save_figure(fig, path)


def _formatted(value: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(value) else f"{value:.{digits}f}"


def _span(low: float, high: float) -> str:
    return "–" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:.3f}, {high:.3f}]"


def _seed_count(value: float) -> str:
    """NaN: no estimate (one seed, or the reference); inf: out of reach of 100 seeds."""
    return "–" if np.isnan(value) else "more than 100" if np.isinf(value) else f"{value:.0f}"


def comparison_view(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as a reader needs it: each estimate beside its interval, the power figures last."""
    return pd.DataFrame({
        "variant": table["variant"], "seeds": table["seeds"], "interval covers": table["covers"],
        "val mIoU": table["val_miou"].map(_formatted), "test mIoU": table["test_miou"].map(_formatted),
        "95% interval": [_span(lo, hi) for lo, hi in zip(table["test_miou_ci_low"], table["test_miou_ci_high"])],
        "seed SD": table["test_miou_sd"].map(_formatted), "test-image SE": table["test_miou_image_se"].map(_formatted),
        "difference": table["delta_miou"].map(lambda v: f"{v:+.3f}"),
        "difference 95% interval": [_span(lo, hi) for lo, hi in zip(table["delta_ci_low"], table["delta_ci_high"])],
        "p": table["p_value"].map(_formatted), "p (Holm)": table["p_holm"].map(_formatted),
        "significant": table["significant"].map({True: "yes", False: "no"}),
        "detectable at 80% power": table["detectable_delta"].map(_formatted),
        "seeds for 0.02": table["seeds_to_detect_0.02"].map(_seed_count),
        "seeds for 0.01": table["seeds_to_detect_0.01"].map(_seed_count),
    })


def comparison_note(reference: str) -> str:
    return (
        f"One row per configuration, ranked by validation mIoU (mean over its seeds); the highlighted row is the one "
        f"validation chooses, and the test numbers only report on that choice. Test mIoU is the mean over the row's "
        f"seeds. Its 95% interval covers two sources of chance: which training runs (seeds) happened, and which test "
        f"images were drawn from the same distribution; it does not cover the choice of hyper-parameters, the "
        f"training data, or another dataset. With one seed it covers the test images only, as the row says. The "
        f"difference is from {reference}, paired image by image and unpaired over seeds (runs share no "
        f"initialisation), with an interval and p-value that allow for seed spreads estimated from few seeds; "
        f"p (Holm) adjusts for all the rows' comparisons at once, and significant means p (Holm) &lt; 0.05. "
        f"A row with one seed, or compared with a reference of one seed, gets no p-value: its test could not hold "
        f"its level. Not significant does not mean "
        f"equal: the true difference may lie anywhere in its interval, and differences smaller than the 'detectable "
        f"at 80% power' column are found less than 80% of the time. Seed SD is the spread of one run's test mIoU; "
        f"test-image SE is the part of the error that comes from the test images; the last two columns say how "
        f"many seeds per configuration a difference of 0.02 or 0.01 mIoU would take on these test images. "
        f"docs/study.md has the method and its calibration.")


def per_class_view(per_class: pd.DataFrame) -> pd.DataFrame:
    never = per_class["never_predicted"].astype(bool)
    return pd.DataFrame({
        "variant": per_class["variant"], "class": per_class["class"],
        "test images with it": per_class["test_images_with_class"],
        "test IoU": per_class["test_iou"].map(_formatted),
        "95% interval": ["never predicted" if flag else _span(lo, hi) if np.isfinite(lo) else "no spread to estimate"
                         for flag, lo, hi in zip(never, per_class["test_iou_ci_low"], per_class["test_iou_ci_high"])],
        "difference": per_class["delta_iou"].map(lambda v: "–" if not np.isfinite(v) else f"{v:+.3f}"),
        "difference 95% interval": [_span(lo, hi) for lo, hi in zip(per_class["delta_ci_low"],
                                                                     per_class["delta_ci_high"])],
        "p (Holm)": per_class["p_holm"].map(_formatted),
        "significant": per_class["significant"].map({True: "yes", False: "no"}),
    })


def write_comparison(table: pd.DataFrame, per_class: pd.DataFrame, reference: str, csv: str | Path,
                     html: str | Path, per_class_csv: str | Path) -> None:
    """tables/comparison.{csv,html} and tables/comparison_per_class.csv (see ``cocoseg.compare``)."""
    write_csv(table, csv)
    write_csv(per_class, per_class_csv)
    sentences = "\n".join(f"<li>{note}</li>" for note in table["power_note"])
    exploratory = ("<h3>Per class (exploratory)</h3>\n<p>The same comparison for each class's IoU. Holm's adjustment "
                   "runs over every (configuration, class) pair at once; read these rows as leads to follow up, not "
                   "as findings; a class in few test images has an unreliable interval (the column says how many). A "
                   "class a configuration never predicts (IoU 0 where it is in the test set) has no spread to "
                   "estimate, and is marked so rather than given an interval.</p>\n")
    write_text(_highlighted_html(comparison_view(table), 0, comparison_note(reference))
               + f"\n<h3>Power: what these seeds can detect</h3>\n<ul>\n{sentences}\n</ul>\n"
               + exploratory + per_class_view(per_class).style.hide(axis="index").to_html(), html)


def power_curves(table: pd.DataFrame, reference: str, path: str | Path, most_seeds: int = 20) -> None:
    """For each configuration against the reference: the difference detectable at 80% power by seeds per
    configuration, on the study's test images, from its estimated seed SDs and test-image SE."""
    reference_sd = float(table.set_index("variant").loc[reference, "test_miou_sd"])
    seeds = np.arange(2, most_seeds + 1)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for _, row in table[np.isfinite(table["detectable_delta"])].iterrows():
        curve = detectable_difference(row["test_miou_sd"] ** 2, seeds, reference_sd**2, seeds,
                                      row["delta_image_se"] ** 2)
        line, = ax.plot(seeds, curve, label=row["variant"])
        ax.scatter([row["seeds"]], [row["detectable_delta"]], color=line.get_color(), zorder=3)
    for delta in (0.01, 0.02):
        ax.axhline(delta, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(f"{delta}", (most_seeds, delta), fontsize=7, va="bottom", ha="right")
    ax.set(xlabel="seeds per configuration", ylabel="difference in test mIoU detectable at 80% power",
           title="How many seeds a difference takes (dots: this study)", yscale="log")
    ax.grid(alpha=0.3, which="both")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "needs 2 or more seeds per configuration", transform=ax.transAxes, ha="center")
    save_figure(fig, path)


def forest_plot(table: pd.DataFrame, per_class: pd.DataFrame, reference: str, path: str | Path) -> None:
    """Each configuration's difference from the reference with its 95% interval: mIoU, then every class."""
    variants = list(table["variant"])
    panels = [("mIoU", table.rename(columns={"delta_miou": "delta"}))]
    for name, rows in per_class.groupby("class", sort=False):
        panels.append((f"IoU {name}", rows.set_index("variant").loc[variants].reset_index()
                       .rename(columns={"delta_iou": "delta"})))
    cols = min(3, len(panels))
    grid_rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(grid_rows, cols, figsize=(4.8 * cols, 0.45 * len(variants) * grid_rows + 1.6 * grid_rows),
                             layout="constrained", squeeze=False, sharey=True)
    y = np.arange(len(variants))[::-1]
    for ax, (title, rows) in zip(axes.flat, panels):
        errors = np.vstack([rows["delta"] - rows["delta_ci_low"], rows["delta_ci_high"] - rows["delta"]])
        ax.errorbar(rows["delta"], y, xerr=np.nan_to_num(errors), fmt="none", ecolor="#4c72b0", capsize=3)
        significant = rows["significant"].astype(bool).to_numpy()
        ax.scatter(rows["delta"][significant], y[significant], color="#c44e52", zorder=3,
                   label="significant after Holm's adjustment")
        ax.scatter(rows["delta"][~significant], y[~significant], facecolor="white", edgecolor="#4c72b0", zorder=3,
                   label="not significant")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(y, [f"{v} (reference)" if v == reference else v for v in variants])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=8)
    fig.suptitle(f"Test IoU difference from {reference}, with 95% intervals (seeds and test images); the per-class "
                 "panels are exploratory", fontsize=10)
    save_figure(fig, path)


def per_class_iou_bars(per_class_csv: str | Path, path: str | Path) -> None:
    runs = pd.read_csv(per_class_csv).drop(columns=["mIoU", "seed"])
    table = runs.groupby("variant", sort=False).mean()  # mean over seeds
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * table.shape[1] * max(1, len(table)) / 3), 4.5), layout="constrained")
    table.T.plot.bar(ax=ax, rot=0, width=0.85, colormap="tab20")
    ax.set(ylabel="test IoU (mean over seeds)", ylim=(0, 1), title="Per-class IoU on the test split")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def confusion_heatmaps(confusion_csvs: dict[str, str | Path], path: str | Path) -> None:
    """Row-normalised confusion matrices: each row shows where a true class's pixels went."""
    count = len(confusion_csvs)
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.2 * rows), layout="constrained", squeeze=False)
    for ax, (variant, csv) in zip(axes.flat, sorted(confusion_csvs.items())):
        table = pd.read_csv(csv).set_index("truth")
        values = table.to_numpy(dtype=float)
        normalised = values / np.maximum(values.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(normalised, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(table.columns)), table.columns, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(table.index)), table.index, fontsize=7)
        ax.set(xlabel="predicted", ylabel="truth", title=variant)
        ax.title.set_fontsize(8)
        for (i, j), value in np.ndenumerate(normalised):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                    color="black" if value > 0.5 else "white")
    for ax in list(axes.flat)[count:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.6, label="share of the true class's pixels")
    save_figure(fig, path)


def sample_test_images(manifest_path: str | Path, count: int, seed: int) -> list[int]:
    """A fixed, seeded choice of test images: the same for every variant."""
    test = split_rows(pd.read_csv(manifest_path), "test")["image_id"].to_numpy()
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(test, size=min(count, len(test)), replace=False).tolist())


def _colourise(mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    return colours[mask]


def prediction_figure(image_ids: list[int], manifest_path: str | Path, run_dir: str | Path,
                      predictions_dir: str | Path, classes: list[str], title: str, path: str | Path,
                      scores: dict[int, float] | None = None) -> None:
    """Rows of image | ground truth | prediction, with a colour legend of the class names."""
    manifest = pd.read_csv(manifest_path).set_index("image_id")
    colours = np.array(palette(len(classes)), dtype=np.uint8).reshape(256, 3)
    fig, axes = plt.subplots(len(image_ids), 3, figsize=(9, 2.8 * len(image_ids)), layout="constrained",
                             squeeze=False)
    for row, image_id in zip(axes, image_ids):
        entry = manifest.loc[image_id]
        truth = read_mask(Path(run_dir) / entry["mask_path"])
        predicted = read_mask(Path(predictions_dir) / f"{image_id}.png")
        panels = [read_rgb(entry["image_path"]), _colourise(truth, colours), _colourise(predicted, colours)]
        score = f" (image mIoU {scores[image_id]:.2f})" if scores and image_id in scores else ""
        for ax, panel, label in zip(row, panels, (f"image {image_id}", "ground truth", f"prediction{score}")):
            ax.imshow(panel, interpolation="nearest")
            ax.set_title(label, fontsize=8)
            ax.axis("off")
    legend = [Patch(color=colours[i] / 255, label=name) for i, name in enumerate(("background", *classes))]
    legend.append(Patch(facecolor="white", edgecolor="black", label="ignore"))
    fig.legend(handles=legend, loc="outside lower center", ncol=min(7, len(legend)), fontsize=8)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def variant_figures(variant: str, manifest_path: str | Path, run_dir: str | Path, evaluation_dir: str | Path,
                    classes: list[str], count: int, worst: int, seed: int, sample_path: str | Path,
                    worst_path: str | Path) -> None:
    evaluation_dir = Path(evaluation_dir)
    scores = pd.read_csv(evaluation_dir / "per_image.csv").set_index("image_id")["miou"].to_dict()
    predictions = evaluation_dir / "predictions"
    prediction_figure(sample_test_images(manifest_path, count, seed), manifest_path, run_dir, predictions,
                      classes, f"{variant}: fixed sample of test images", sample_path, scores)
    worst_ids = sorted(scores, key=lambda i: (np.nan_to_num(scores[i], nan=np.inf), i))[:worst]
    prediction_figure(worst_ids, manifest_path, run_dir, predictions, classes,
                      f"{variant}: worst test images by image mIoU", worst_path, scores)
