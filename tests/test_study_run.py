"""The whole tiny study through a real `snakemake` run: training, evaluation, comparison, export, the report.

The data stage it starts from is the `data_run` fixture's (conftest.py), whose own checks are test_workflow.py's.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CLASSES, THREADS, planned_jobs, snakemake
from PIL import Image


@pytest.fixture(scope="module")
def full_run(data_run):
    snakemake("--cores", str(THREADS), "--directory", str(data_run), "--configfile", str(data_run / "tiny.yaml"))
    report = data_run / "report.html"
    snakemake("--directory", str(data_run), "--configfile", str(data_run / "tiny.yaml"), "--report", str(report))
    return data_run


def test_every_variant_is_trained_evaluated_and_reported(full_run):
    run = full_run / "results" / "tiny"
    config = yaml.safe_load((full_run / "tiny.yaml").read_text())
    variants, seeds = config["grid"]["variants"], config["grid"]["seeds"]
    summary = pd.read_csv(run / "tables" / "summary.csv")
    assert sorted(zip(summary["variant"], summary["seed"])) == sorted((v, s) for v in variants for s in seeds)
    configuration_val = summary.groupby("variant", sort=False)["val_miou"].mean()
    assert configuration_val.is_monotonic_decreasing  # variants in the order of their mean validation mIoU
    per_class = pd.read_csv(run / "tables" / "per_class_iou.csv")
    assert list(per_class.columns) == ["variant", "seed", "background", *CLASSES, "mIoU"]
    for variant in variants:
        assert (run / "figures" / "predictions" / f"{variant}.png").exists()
        assert (run / "figures" / "worst" / f"{variant}.png").exists()
        for seed in seeds:
            history = pd.read_csv(run / "models" / variant / f"seed{seed}" / "metrics.csv")
            assert history["epoch"].tolist() == list(range(1, len(history) + 1))
            assert json.loads((run / "models" / variant / f"seed{seed}" / "evaluation" / "metrics.json")
                              .read_text())["seed"] == seed
    html = (full_run / "report.html").read_text()
    for name in ("summary.html", "per_class_iou.html", "class_images.png", "training_curves.png",
                 "confusion.png", f"predictions/{variants[0]}.png", "comparison.html", "forest.png", "power.png",
                 "deployment.html"):
        assert name in html, name


def test_comparison_table_ranks_by_validation_with_the_reference_at_zero(full_run):
    run = full_run / "results" / "tiny"
    config = yaml.safe_load((full_run / "tiny.yaml").read_text())
    table = pd.read_csv(run / "tables" / "comparison.csv")
    columns = ["variant", "seeds", "val_miou", "test_miou", "test_miou_sd", "test_miou_ci_low", "test_miou_ci_high",
               "delta_miou", "delta_ci_low", "delta_ci_high", "p_value", "p_holm", "significant", "covers",
               "test_miou_image_se", "delta_image_se", "detectable_delta", "seeds_to_detect_0.01",
               "seeds_to_detect_0.02", "power_note"]
    assert set(columns) <= set(table.columns)
    assert sorted(table["variant"]) == sorted(config["grid"]["variants"])
    assert (table["seeds"] == len(config["grid"]["seeds"])).all()
    assert table["val_miou"].is_monotonic_decreasing
    reference = table.set_index("variant").loc[config["evaluate"]["reference"]]
    assert (reference["delta_miou"], reference["delta_ci_low"], reference["delta_ci_high"]) == (0, 0, 0)
    assert (table["test_miou_ci_low"] <= table["test_miou"]).all()
    assert (table["test_miou"] <= table["test_miou_ci_high"]).all()
    per_class = pd.read_csv(run / "tables" / "comparison_per_class.csv")
    assert set(per_class["class"]) == {"background", *CLASSES}
    # Steps budget: every variant of a backbone took the same optimizer steps, oversampled or not.
    steps = table.assign(backbone=table["variant"].str.split("-").str[0]).groupby("backbone")["steps"].nunique()
    assert (steps == 1).all()
    assert (table["power_note"].str.len() > 0).all() and "Power: what these seeds can detect" in \
        (run / "tables" / "comparison.html").read_text()


def test_compare_command_reproduces_the_rule(full_run, tmp_path):
    subprocess.run([sys.executable, "-m", "cocoseg", "compare", "--configfile", str(full_run / "tiny.yaml"),
                    "--out-dir", str(tmp_path)], cwd=full_run, check=True, capture_output=True, timeout=300)
    rule = pd.read_csv(full_run / "results" / "tiny" / "tables" / "comparison.csv")
    command = pd.read_csv(tmp_path / "tables" / "comparison.csv")
    pd.testing.assert_frame_equal(command, rule)
    assert (tmp_path / "figures" / "power.png").stat().st_size > 10_000


def test_the_exported_model_is_the_run_validation_chooses_and_verified(full_run):
    run = full_run / "results" / "tiny"
    summary = pd.read_csv(run / "tables" / "summary.csv")  # its first row: the run validation chooses
    sidecar = json.loads((run / "deploy" / "model.json").read_text())
    assert (sidecar["provenance"]["variant"], sidecar["provenance"]["seed"]) == (summary["variant"][0],
                                                                                 summary["seed"][0])
    assert (run / "deploy" / "model.onnx").stat().st_size > 0
    check = sidecar["verification"]
    assert check["max_logit_difference"] <= 1e-3 and abs(check["miou_difference"]) <= 1e-3
    table = pd.read_csv(run / "tables" / "deployment.csv").set_index("runtime")
    assert {"pytorch", "pytorch (project)", "onnxruntime", "openvino"} <= set(table.index)
    assert table.loc["onnxruntime", "test_miou"] == pytest.approx(check["test_miou"], abs=1e-12)


def test_trained_models_beat_the_all_background_baseline(full_run):
    """The all-background predictor scores (background IoU) / (classes present) on the same test pixels.

    After six epochs of 96 px training on 64 synthetic images, the best MobileNetV3 variant must beat it
    by 0.05 mIoU: that takes at least one object class segmented with an IoU well above zero, which a
    model that learnt nothing (or a pipeline that misaligns images and masks) cannot reach.
    """
    run = full_run / "results" / "tiny"
    summary = pd.read_csv(run / "tables" / "summary.csv")
    best = summary["test_miou"].idxmax()
    confusion = pd.read_csv(run / "models" / summary["variant"][best] / f"seed{summary['seed'][best]}" / "evaluation"
                            / "confusion.csv")
    truth = confusion.drop(columns="truth").to_numpy().sum(axis=1)
    baseline = (truth[0] / truth.sum()) / (truth > 0).sum()
    assert summary["test_miou"].max() > baseline + 0.05, (summary[["variant", "test_miou"]], baseline)


def test_execution_settings_rerun_nothing_and_result_settings_retrain(full_run, tmp_path):
    """num_workers, device, eval batch size, wandb and compile change how a job runs, not what it computes."""
    config = yaml.safe_load((full_run / "tiny.yaml").read_text())
    config["train"].update(num_workers=1, device="cpu", compile=True)
    config["evaluate"]["batch_size"] = 3
    config["wandb"].update(mode="offline", project="elsewhere")
    (tmp_path / "execution.yaml").write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--directory", str(full_run), "--configfile", str(tmp_path / "execution.yaml")).stdout
    # Only the provenance record, which holds the whole config, is written again.
    assert set(planned_jobs(out)) == {"provenance", "all", "total"}, out
    config["train"]["lr"] *= 2
    (tmp_path / "lr.yaml").write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--directory", str(full_run), "--configfile", str(tmp_path / "lr.yaml")).stdout
    jobs = planned_jobs(out)
    assert jobs["train"] == len(config["grid"]["variants"]) * len(config["grid"]["seeds"]), out


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package 'chromium')")
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--virtual-time-budget=5000",
         f"--screenshot={screenshot}", (full_run / "report.html").as_uri()],
        check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.std() > 20  # a rendered page, not a blank or error screen
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         f"--user-data-dir={tmp_path / 'profile2'}", "--virtual-time-budget=5000", "--dump-dom",
         (full_run / "report.html").as_uri()], check=True, capture_output=True, text=True, timeout=120).stdout
    assert "cocoseg: multi-class semantic segmentation" in dom
    assert "Evaluation" in dom and "Predictions" in dom and "Training" in dom
