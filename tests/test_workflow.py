"""The workflow itself: dry runs of both configs, a clean lint, and a real `snakemake data` run."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import CLASSES, REPO

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(*args, cwd=REPO, check=True):
    result = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_dry_run_plans_the_study_without_network(tmp_path):
    out = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config/config.yaml")).stdout
    jobs = dict(line.split() for line in out.splitlines() if line.split()[:1] and line.split()[-1].isdigit()
                and len(line.split()) == 2)
    assert jobs["download"] == "2" and jobs["masks"] == "8" and jobs["stats"] == "1"
    assert "synth" not in jobs
    assert "http://images.cocodataset.org/zips/val2014.zip" in out


def test_dry_run_plans_the_demo(tmp_path):
    out = snakemake("-n", "--directory", str(tmp_path), "--configfile", str(REPO / "config/demo.yaml")).stdout
    assert "rule synth:" in out or "synth " in out


@pytest.mark.parametrize("config", ["config/config.yaml", "config/demo.yaml"])
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
    config["dataset"].update(name="synthetic-tiny", max_images=50)
    config["dataset"]["synthetic"].update(num_images=70, seed=3)
    config["masks"]["shards"] = 3
    (root / "tiny.yaml").write_text(yaml.safe_dump(config))
    snakemake("data", "--cores", "2", "--directory", str(root), "--configfile", str(root / "tiny.yaml"))
    return root


def test_data_run_meets_the_contract(data_run):
    run = data_run / "results" / "tiny"
    manifest = pd.read_csv(run / "data" / "manifest.csv")
    assert len(manifest) == 50
    assert manifest["image_id"].is_monotonic_increasing and manifest["image_id"].is_unique
    required = ["image_id", "file_name", "width", "height", "split", "mask_path"]
    assert set(required + [f"pixels_{c}" for c in CLASSES]) <= set(manifest.columns)
    assert manifest["split"].value_counts().to_dict() == {"train": 40, "val": 5, "test": 5}
    splits = pd.read_csv(run / "data" / "splits.csv")
    assert splits.equals(manifest[["image_id", "split"]])
    images_dir = data_run / "resources" / "synthetic-tiny" / "images"
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
    rejected = pd.read_csv(run / "data" / "rejected.csv")
    assert list(rejected.columns) == ["image_id", "file_name", "reason"]
    for rule in ("synth", "download_images", "download_annotations", "extract_annotations", "extract_images",
                 "select", "masks_0", "masks_2", "split", "stats"):
        assert (run / "logs" / f"{rule}.log").exists(), rule
    assert (run / "figures" / "class_images.png").exists() and (run / "figures" / "class_pixels.png").exists()


def test_rerun_has_nothing_to_do(data_run):
    out = snakemake("data", "-n", "--directory", str(data_run), "--configfile", str(data_run / "tiny.yaml")).stdout
    assert "Nothing to be done" in out


def test_report_shows_the_histograms(data_run):
    report = data_run / "report.html"
    snakemake("data", "--directory", str(data_run), "--configfile", str(data_run / "tiny.yaml"),
              "--report", str(report))
    html = report.read_text()
    assert "class_images.png" in html and "class_pixels.png" in html and "class_distribution.html" in html
