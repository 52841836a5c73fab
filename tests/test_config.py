import copy
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, without_training_stack

from cocoseg.config import ConfigError, load_config, validate_config


def study() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml", "synthetic-study.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["dataset"]["classes"][0] == "person"
    assert config["masks"]["shards"] >= 1


def test_defaults_are_filled_in():
    config = study()
    del config["masks"]
    del config["dataset"]["crowd"]
    filled = validate_config(config)
    assert filled["masks"]["shards"] == 4
    assert filled["dataset"]["crowd"] == "ignore"
    assert "masks" not in config  # the caller's dict is left alone


def mutated(change) -> dict:
    config = copy.deepcopy(study())
    change(config)
    return config


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c["dataset"].update(claases=["person"]), r"dataset: .*'claases' was unexpected.*allowed keys here"),
        (lambda c: c["dataset"].update(crowd="maybe"), r"dataset.crowd: 'maybe' is not allowed; use one of"),
        (lambda c: c["dataset"].update(max_images="many"), r"dataset.max_images: 'many' is not of type"),
        (lambda c: c["split"].update(train=1.5), r"split.train: 1.5 is greater than the maximum"),
        (lambda c: c["split"].update(train=0.5), r"split.train \+ split.val \+ split.test = 0.7"),
        (lambda c: c["dataset"].update(source="local"), r"'images_dir' is a required property"),
        (lambda c: c["dataset"].update(classes=["person", "aeroplane"]), r"'aeroplane'.*Did you mean 'airplane'"),
        (lambda c: c["dataset"]["download"]["images"].update(url="ftp://x"), r"dataset.download.images.url"),
        (lambda c: c.update(run="../escape"), r"run: '../escape' does not match"),
        (lambda c: c["masks"].update(shards=0), r"masks.shards: 0 is less than the minimum"),
        (lambda c: c["train"].update(precision="fp16"),
         r"train.precision: 'fp16' is not allowed; use one of \['auto', 'bf16', 'fp32'\]"),
    ],
)
def test_bad_configs_name_the_key(change, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config(mutated(change))


def test_an_installed_cocoseg_validates_a_config_without_the_training_stack(tmp_path):
    """A non-editable install (the schema is package data) validates a config with no checkout and no torch."""
    source = tmp_path / "source"
    shutil.copytree(REPO / "src" / "cocoseg", source / "src" / "cocoseg",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(source)], check=True, capture_output=True)
    shutil.rmtree(source)
    env = without_training_stack(tmp_path / "blocked")
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    check = (
        "import sys, cocoseg.config as c\n"
        "from cocoseg.config import ConfigError, load_config\n"
        f"assert c.__file__.startswith({str(site)!r}), c.__file__\n"
        "config = load_config(sys.argv[1])\n"
        "assert config['masks']['shards'] >= 1 and config['evaluate']['runtime'] > 0\n"
        "try:\n"
        "    load_config(sys.argv[2])\n"
        "except ConfigError as e:\n"
        "    print(e)\n"
    )
    bad = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    bad["dataset"]["crowd"] = "sometimes"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    configs = [str(REPO / "config" / "demo.yaml"), str(tmp_path / "bad.yaml")]
    result = subprocess.run([sys.executable, "-c", check, *configs], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "dataset.crowd: 'sometimes' is not allowed" in result.stdout
