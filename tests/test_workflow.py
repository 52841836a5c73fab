"""The workflow itself: dry runs of the configs, a clean lint, a real `snakemake data` run, and two ranks.

The whole study run of the same tiny config is test_study_run.py's."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CLASSES, REPO, planned_jobs, snakemake, without_training_stack
from PIL import Image

from cocoseg.categories import class_set_name
from cocoseg.data.split import stratified_split
from cocoseg.paths import RunPaths


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


def test_report_shows_the_histograms(data_run, tmp_path):
    report = tmp_path / "report.html"  # test_study_run's report.html stays as it made it
    snakemake("data", "--directory", str(data_run), "--configfile", str(data_run / "tiny.yaml"),
              "--report", str(report))
    html = report.read_text()
    assert "class_images.png" in html and "class_pixels.png" in html and "class_distribution.html" in html


def test_two_gpus_through_a_real_snakemake_run_train_two_ranks(data_run):
    """``train.gpus: 2`` takes the rule's multi-process branch: spawned ranks (gloo standing in for NCCL).

    A spawned rank re-imports its parent's main script, which under Snakemake is the rule script
    without the preamble that defines ``snakemake``: every rank died with a NameError.
    """
    config = yaml.safe_load((data_run / "tiny.yaml").read_text())
    # The tiny run's data stage, and a seed of its own that no other test trains: only this job is to run.
    config["grid"].update(variants=["mobilenet_v3_large-cross_entropy-uniform"], seeds=[7])
    config["train"].update(image_size=32, epochs=1, gpus=2, batch_size=4, base_batch_size=4)
    (data_run / "ddp.yaml").write_text(yaml.safe_dump(config))
    model = data_run / "results/tiny/models/mobilenet_v3_large-cross_entropy-uniform/seed7"
    target = [str(model.relative_to(data_run) / "training.json"), "--directory", str(data_run), "--configfile",
              str(data_run / "ddp.yaml")]
    assert set(planned_jobs(snakemake(*target, "-n").stdout)) - {"total"} <= {"train", "cache"}
    snakemake(*target, "--cores", "2", "--resources", "gpu=2")
    assert json.loads((model / "training.json").read_text())["world_size"] == 2
    log = (data_run / "results/tiny/logs/train_mobilenet_v3_large-cross_entropy-uniform_seed7.log").read_text()
    assert "[rank 0]" in log and "[rank 1]" in log




def test_split_command_reproduces_the_workflows_manifest(data_run, tmp_path):
    config = yaml.safe_load((data_run / "tiny.yaml").read_text())
    run = RunPaths(str(data_run / "results" / "tiny"))
    shards = range(config["masks"]["shards"])
    fractions = [f"{name}={config['split'][name]}" for name in ("train", "val", "test")]
    images = data_run / "resources" / "synthetic-tiny" / "images" / class_set_name(CLASSES)
    subprocess.run([sys.executable, "-m", "cocoseg", "split", "--selected", run.selected,
                    "--counts", *[run.mask_counts(shard) for shard in shards], "--classes", *CLASSES,
                    "--manifest", str(tmp_path / "manifest.csv"), "--splits", str(tmp_path / "splits.csv"),
                    "--fractions", *fractions, "--seed", str(config["split"]["seed"]), "--images-dir", str(images),
                    "--mask-dirs", *[RunPaths.mask_folder(shard) for shard in shards]],
                   check=True, capture_output=True, timeout=120)
    workflow = pd.read_csv(run.manifest)
    command = pd.read_csv(tmp_path / "manifest.csv")
    pd.testing.assert_frame_equal(command.drop(columns="image_path"), workflow.drop(columns="image_path"))
    assert [Path(p).resolve() for p in command["image_path"]] == [(data_run / p).resolve()
                                                                   for p in workflow["image_path"]]
