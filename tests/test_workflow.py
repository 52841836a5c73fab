"""The workflow itself: dry runs of both configs, a clean lint, and a real `snakemake data` run."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CLASSES, REPO, without_training_stack
from PIL import Image

from cocoseg.categories import class_set_name
from cocoseg.data.split import stratified_split

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(*args, cwd=REPO, check=True, env=None):
    result = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_dry_run_plans_the_study_without_network(tmp_path):
    out = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config/config.yaml")).stdout
    jobs = dict(line.split() for line in out.splitlines() if line.split()[:1] and line.split()[-1].isdigit()
                and len(line.split()) == 2)
    assert jobs["download"] == "2" and jobs["masks"] == "8" and jobs["stats"] == "1"
    # 12 configurations x 5 seeds; prediction figures show each configuration's first seed.
    assert jobs["train"] == jobs["evaluate"] == "60" and jobs["prediction_figures"] == "12"
    assert jobs["compare"] == jobs["export"] == jobs["deployment"] == "1"
    assert jobs["total"] == "156"  # as the README says
    assert "synth" not in jobs
    assert "http://images.cocodataset.org/zips/val2014.zip" in out


def planned_jobs(out: str) -> dict[str, int]:
    """The dry run's (first) job stats table: rule name -> count, ``total`` included."""
    lines = out.split("Job stats:", 1)[1].splitlines()
    jobs = {}
    for row in (line.split() for line in lines[3:]):
        if len(row) != 2 or not row[1].isdigit():
            break
        jobs[row[0]] = int(row[1])
    return jobs


@pytest.mark.parametrize("config", ["config/config.yaml", "config/demo.yaml"])
def test_parsing_the_workflow_needs_no_training_stack(tmp_path, config):
    """The driver plans jobs whose environments (--use-conda) hold torch & co.; it must not need them itself."""
    env = without_training_stack(tmp_path / "blocked")
    out = snakemake("-n", "--directory", str(tmp_path / "run"), "--configfile", str(REPO / config), env=env).stdout
    jobs = planned_jobs(out)
    assert jobs["train"] == jobs["evaluate"] >= 1 and jobs["masks"] >= 1


def test_dry_run_plans_the_demo(tmp_path):
    out = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config/demo.yaml")).stdout
    demo = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    runs = len(demo["grid"]["variants"]) * len(demo["grid"]["seeds"])
    jobs = planned_jobs(out)
    assert jobs["synth"] == 1 and "download" in jobs  # the synthetic archives, through the real download rule
    assert jobs["train"] == jobs["evaluate"] == runs and jobs["compare"] == 1


@pytest.mark.parametrize("config", ["config/config.yaml", "config/demo.yaml", "config/synthetic-study.yaml"])
def test_lint_is_clean(config):
    result = snakemake("--lint", "--configfile", str(REPO / config))
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_bad_config_stops_before_any_work(tmp_path):
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["dataset"]["crowd"] = "sometimes"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert result.returncode != 0
    assert "dataset.crowd: 'sometimes' is not allowed; use one of ['ignore', 'label', 'background']" in (
        result.stdout + result.stderr)
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text())
    config["run"] = "tiny"
    config["dataset"].update(name="synthetic-tiny", max_images=80)
    config["dataset"]["synthetic"].update(num_images=100, seed=3)
    config["masks"]["shards"] = 3
    config["train"].update(image_size=96, epochs=8, overrides={"resnet50": {"image_size": 32, "epochs": 1}})
    config["wandb"]["mode"] = "disabled"
    config["export"] = {"timing_seconds": 0.3, "batch_size": 4}  # the deployment table: a smoke test here
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake("data", "--cores", "2", "--directory", str(root), "--configfile", str(root / "tiny.yaml"))
    return root


def test_data_run_meets_the_contract(data_run):
    run = data_run / "results" / "tiny"
    manifest = pd.read_csv(run / "data" / "manifest.csv")
    assert len(manifest) == 80
    assert manifest["image_id"].is_monotonic_increasing and manifest["image_id"].is_unique
    required = ["image_id", "file_name", "width", "height", "split", "mask_path"]
    assert set(required + [f"pixels_{c}" for c in CLASSES]) <= set(manifest.columns)
    assert manifest["split"].value_counts().to_dict() == {"train": 64, "val": 8, "test": 8}
    images_dir = data_run / "resources" / "synthetic-tiny" / "images" / class_set_name(CLASSES)
    present = pd.DataFrame(False, index=manifest.index, columns=CLASSES)
    for row in manifest.itertuples():
        with Image.open(run / row.mask_path) as mask_image:
            assert mask_image.mode in ("L", "P")
            mask = np.array(mask_image)
        with Image.open(images_dir / row.file_name) as image:
            assert image.size == mask_image.size == (row.width, row.height)
        hist = np.bincount(mask.ravel(), minlength=256)
        assert set(np.flatnonzero(hist)) <= {0, 1, 2, 3, 4, 5, 255}
        for label, name in enumerate(CLASSES, start=1):
            assert manifest.loc[row.Index, f"pixels_{name}"] == hist[label]
            present.loc[row.Index, name] = hist[label] > 0
    # The split is the stratified split of what the mask files hold (not of counts that could disagree).
    split = yaml.safe_load((data_run / "tiny.yaml").read_text())["split"]
    expected = stratified_split(present, {name: split[name] for name in ("train", "val", "test")}, split["seed"])
    assert manifest["split"].tolist() == expected.tolist()
    assert pd.read_csv(run / "data" / "splits.csv")["split"].tolist() == expected.tolist()
    rejected = pd.read_csv(run / "data" / "rejected.csv")
    assert list(rejected.columns) == ["image_id", "file_name", "reason"]
    for rule in ("synth", "download_images", "download_annotations", "extract_annotations", "extract_images",
                 "select", "masks_0", "masks_2", "split", "stats"):
        assert (run / "logs" / f"{rule}.log").exists(), rule
    assert (run / "figures" / "class_images.png").exists() and (run / "figures" / "class_pixels.png").exists()


def test_rerun_has_nothing_to_do(data_run):
    out = snakemake("data", "-n", "--directory", str(data_run), "--configfile", str(data_run / "tiny.yaml")).stdout
    assert "Nothing to be done" in out


def test_extracted_images_are_tracked_and_shared_by_runs_of_the_same_classes(data_run, tmp_path):
    config = yaml.safe_load((data_run / "tiny.yaml").read_text())
    # Snakemake can clean up (so it tracks) every file the data stage wrote: images and masks included.
    dry_clean = snakemake("data", "--delete-all-output", "--dry-run", "--directory", str(data_run), "--configfile",
                          str(data_run / "tiny.yaml"))
    declared = {Path(line.removeprefix("Would delete ")) for line in dry_clean.stdout.splitlines()
                if line.startswith("Would delete ")}
    written = [path.relative_to(data_run) for folder in ("resources", "results/tiny/data")
               for path in (data_run / folder).rglob("*") if path.is_file()]
    assert written and all(declared & {path, *path.parents} for path in written), set(written) - declared
    plans = {}
    for run, classes in {"tiny-same": CLASSES[::-1], "tiny-fewer": ["car", "person"]}.items():
        (tmp_path / f"{run}.yaml").write_text(yaml.safe_dump({**config, "run": run,
                                                              "dataset": {**config["dataset"], "classes": classes}}))
        plans[run] = snakemake("data", "-n", "--directory", str(data_run), "--configfile",
                               str(tmp_path / f"{run}.yaml")).stdout
    assert "extract_images" not in plans["tiny-same"]  # the same classes in another order: the same folder
    assert "Missing output files: resources/synthetic-tiny/images/car+person" in plans["tiny-fewer"]


def test_local_source_gives_the_synthetic_routes_manifest(data_run):
    """``dataset.source: local`` on the files the synthetic route downloaded and extracted: the same data stage."""
    config = yaml.safe_load((data_run / "tiny.yaml").read_text())
    resources = data_run / "resources" / config["dataset"]["name"]
    config["run"] = "tiny-local"
    images = resources / "images" / class_set_name(CLASSES)
    config["dataset"].update(source="local", name="local-tiny", images_dir=str(images),
                             annotations=str(resources / "annotations" / "instances.json"))
    (data_run / "local.yaml").write_text(yaml.safe_dump(config))
    out = snakemake("data", "--cores", "2", "--directory", str(data_run), "--configfile", str(data_run / "local.yaml"))
    assert "rule download" not in out.stdout + out.stderr and "rule extract_images" not in out.stdout + out.stderr
    assert not (data_run / "resources" / "local-tiny").exists()
    synthetic = pd.read_csv(data_run / "results" / "tiny" / "data" / "manifest.csv")
    local = pd.read_csv(data_run / "results" / "tiny-local" / "data" / "manifest.csv")
    pd.testing.assert_frame_equal(local.drop(columns="image_path"), synthetic.drop(columns="image_path"))
    assert [Path(p) for p in local["image_path"]] == [(data_run / p).resolve() for p in synthetic["image_path"]]


def test_report_shows_the_histograms(data_run):
    report = data_run / "report.html"
    snakemake("data", "--directory", str(data_run), "--configfile", str(data_run / "tiny.yaml"),
              "--report", str(report))
    html = report.read_text()
    assert "class_images.png" in html and "class_pixels.png" in html and "class_distribution.html" in html


@pytest.fixture(scope="module")
def full_run(data_run):
    snakemake("--cores", "2", "--directory", str(data_run), "--configfile", str(data_run / "tiny.yaml"))
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

    After eight epochs of 96 px training on 64 synthetic images, the best MobileNetV3 variant must beat it
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


def test_two_gpus_through_a_real_snakemake_run_train_two_ranks(data_run):
    """``train.gpus: 2`` takes the rule's multi-process branch: spawned ranks (gloo standing in for NCCL).

    A spawned rank re-imports its parent's main script, which under Snakemake is the rule script
    without the preamble that defines ``snakemake``: every rank died with a NameError.
    """
    config = yaml.safe_load((data_run / "tiny.yaml").read_text())
    config["run"] = "tiny-ddp"
    config["grid"].update(variants=["mobilenet_v3_large-cross_entropy-uniform"], seeds=[0])
    config["train"].update(image_size=32, epochs=1, gpus=2, batch_size=4, base_batch_size=4)
    (data_run / "ddp.yaml").write_text(yaml.safe_dump(config))
    model = data_run / "results/tiny-ddp/models/mobilenet_v3_large-cross_entropy-uniform/seed0"
    snakemake(str(model.relative_to(data_run) / "training.json"), "--cores", "2", "--resources", "gpu=2",
              "--directory", str(data_run), "--configfile", str(data_run / "ddp.yaml"))
    assert json.loads((model / "training.json").read_text())["world_size"] == 2
    log = (data_run / "results/tiny-ddp/logs/train_mobilenet_v3_large-cross_entropy-uniform_seed0.log").read_text()
    assert "[rank 0]" in log and "[rank 1]" in log


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
