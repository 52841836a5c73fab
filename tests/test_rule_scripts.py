"""Each data-stage rule script run alone, on small inputs in a temporary folder, with a stand-in snakemake object."""

import json
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest
from conftest import CLASSES, REPO, run_rule_script
from PIL import Image

from cocoseg.data.masks import build_masks
from cocoseg.data.select import select_images
from cocoseg.data.split import split_manifest


@pytest.fixture(scope="module")
def selection(synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("selection")
    select_images(synthetic.annotations, synthetic.images_dir, CLASSES, out, max_images=60)
    return out


@pytest.fixture(scope="module")
def manifest(selection, tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    build_masks(selection / "instances.json", out / "masks", out / "counts.csv")
    split_manifest(selection / "selected.csv", [out / "counts.csv"], CLASSES, out / "manifest.csv",
                   out / "splits.csv", {"train": 0.8, "val": 0.1, "test": 0.1})
    return out / "manifest.csv"


def test_synth(tmp_path):
    run_rule_script("synth", output={"images": tmp_path / "i.zip", "annotations": tmp_path / "a.zip"},
                    params={"num_images": 12, "seed": 1, "sizes": [[64, 48]]}, log=tmp_path / "synth.log")
    with zipfile.ZipFile(tmp_path / "i.zip") as z:
        assert len(z.namelist()) == 12
    with zipfile.ZipFile(tmp_path / "a.zip") as z:
        document = json.loads(z.read("annotations/instances_val2014.json"))
    assert {(i["width"], i["height"]) for i in document["images"]} == {(64, 48)}
    assert "synthetic dataset" in (tmp_path / "synth.log").read_text()


def test_download(synthetic, tmp_path):
    run_rule_script("download", output={"out": tmp_path / "images.zip"},
                    params={"url": synthetic.images_zip.as_uri(), "sha256": None, "retries": 0, "timeout": 5},
                    log=tmp_path / "download.log")
    assert (tmp_path / "images.zip").read_bytes() == synthetic.images_zip.read_bytes()


def test_extract_annotations(synthetic, tmp_path):
    run_rule_script("extract_annotations", input={"archive": synthetic.annotations_zip},
                    output={"json": tmp_path / "instances.json"},
                    params={"member": "annotations/instances_val2014.json"}, log=tmp_path / "x.log")
    assert (tmp_path / "instances.json").read_bytes() == synthetic.annotations.read_bytes()


def test_extract_images(synthetic, tmp_path):
    run_rule_script("extract_images", input={"archive": synthetic.images_zip, "annotations": synthetic.annotations},
                    output={"images": tmp_path / "images", "listing": tmp_path / "extracted.csv"},
                    params={"classes": CLASSES}, log=tmp_path / "x.log", threads=2)
    listing = pd.read_csv(tmp_path / "extracted.csv")
    assert len(listing) == len(list((tmp_path / "images").iterdir())) > 0


def test_select(synthetic, tmp_path):
    out = tmp_path / "data"
    run_rule_script("select", input={"annotations": synthetic.annotations, "images": synthetic.images_dir,
                                     "extracted": []},
                    output={"selected": out / "selected.csv", "rejected": out / "rejected.csv",
                            "instances": out / "instances.json"},
                    params={"classes": CLASSES, "max_images": 30, "seed": 0,
                            "crowd": "ignore"}, log=tmp_path / "select.log", threads=2)
    assert len(pd.read_csv(out / "selected.csv")) == 30
    assert pd.read_csv(out / "rejected.csv").empty
    assert len(json.loads((out / "instances.json").read_text())["images"]) == 30


def test_masks(selection, tmp_path):
    run_rule_script("masks", input={"instances": selection / "instances.json"},
                    output={"counts": tmp_path / "pixels-1.csv", "masks": tmp_path / "masks"},
                    params={"crowd": "ignore", "num_shards": 2},
                    wildcards={"shard": "1"}, log=tmp_path / "masks.log")
    counts = pd.read_csv(tmp_path / "pixels-1.csv")
    selected = pd.read_csv(selection / "selected.csv")["image_id"].tolist()
    assert counts["image_id"].tolist() == selected[1::2]
    for image_id in counts["image_id"]:
        mask = np.array(Image.open(tmp_path / "masks" / f"{image_id}.png"))
        assert set(np.unique(mask)) <= {0, 1, 2, 3, 4, 5, 255}


def test_split(selection, tmp_path):
    build_masks(selection / "instances.json", tmp_path / "masks", tmp_path / "c0.csv", shard=0, num_shards=2)
    build_masks(selection / "instances.json", tmp_path / "masks", tmp_path / "c1.csv", shard=1, num_shards=2)
    run_rule_script("split", input={"selected": selection / "selected.csv",
                                    "counts": [tmp_path / "c0.csv", tmp_path / "c1.csv"]},
                    output={"manifest": tmp_path / "manifest.csv", "splits": tmp_path / "splits.csv"},
                    params={"classes": CLASSES, "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}, "seed": 0,
                            "images_dir": "images", "mask_dirs": ["data/masks/0", "data/masks/1"]},
                    log=tmp_path / "split.log")
    manifest = pd.read_csv(tmp_path / "manifest.csv")
    shard_of = {i: shard for shard in (0, 1) for i in pd.read_csv(tmp_path / f"c{shard}.csv")["image_id"]}
    assert manifest["mask_path"].tolist() == [f"data/masks/{shard_of[i]}/{i}.png" for i in manifest["image_id"]]
    assert manifest["split"].value_counts().to_dict() == {"train": 48, "val": 6, "test": 6}
    splits = pd.read_csv(tmp_path / "splits.csv")
    # The split follows the images and the seed, not how the masks were sharded: one shard, same split.
    build_masks(selection / "instances.json", tmp_path / "one", tmp_path / "all.csv", shard=0, num_shards=1)
    fractions = {"train": 0.8, "val": 0.1, "test": 0.1}
    split_manifest(selection / "selected.csv", [tmp_path / "all.csv"], CLASSES, tmp_path / "m1.csv",
                   tmp_path / "s1.csv", fractions, seed=0)
    assert pd.read_csv(tmp_path / "s1.csv").equals(splits)
    split_manifest(selection / "selected.csv", [tmp_path / "all.csv"], CLASSES, tmp_path / "m2.csv",
                   tmp_path / "s2.csv", fractions, seed=1)
    assert not pd.read_csv(tmp_path / "s2.csv")["split"].equals(splits["split"])  # the seed matters
    for name in CLASSES:  # stratified: each class (present in 6+ images here) in each split
        assert set(manifest.loc[manifest[f"pixels_{name}"] > 0, "split"]) == {"train", "val", "test"}, name


def test_stats(manifest, tmp_path):
    outputs = {"table": tmp_path / "t.csv", "table_html": tmp_path / "t.html",
               "images_figure": tmp_path / "i.png", "pixels_figure": tmp_path / "p.png"}
    run_rule_script("stats", input={"manifest": manifest}, output=outputs, params={"classes": CLASSES},
                    log=tmp_path / "stats.log")
    table = pd.read_csv(outputs["table"])
    everything = table[table["split"] == "all"]
    assert everything["pixel_share"].sum() == pytest.approx(1.0)
    assert "<table" in outputs["table_html"].read_text()
    for figure in ("images_figure", "pixels_figure"):
        with Image.open(outputs[figure]) as image:
            assert image.format == "PNG" and image.size[0] > 500


MODEL_SCRIPTS = {"train", "evaluate", "export", "deployment"}
IMPORTS_OF = """
import importlib, re, sys
from pathlib import Path
for script in sys.argv[1:]:
    for module in re.findall(r"^from (cocoseg[\\w.]*) import", Path(script).read_text(), re.M):
        importlib.import_module(module)
        print(script, module, *[name for name in ("torch", "torchvision", "albumentations") if name in sys.modules])
"""


def test_only_the_model_jobs_import_torch():
    """Tables, figures, the cache and the data stage start in about a second (provenance imports torch later, to name
    the GPUs): importing torch and torchvision alone takes about 4 s of CPU, paid by every job that does."""
    scripts = sorted(path for path in (REPO / "workflow" / "scripts").glob("*.py") if path.stem not in MODEL_SCRIPTS)
    assert {"tables", "compare", "curves", "evaluation_figures", "prediction_figures", "cache"} <= {
        path.stem for path in scripts}
    out = subprocess.run([sys.executable, "-c", IMPORTS_OF, *map(str, scripts)], capture_output=True, text=True,
                         check=True).stdout
    imported = [line for line in out.splitlines() if len(line.split()) > 2]
    assert not imported, imported  # the first line: the script and the module that brought the training stack
    assert {line.split()[0] for line in out.splitlines()} == set(map(str, scripts))  # each script's imports ran
