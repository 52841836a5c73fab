import copy

import pytest
import yaml

from cocoseg.config import ConfigError, load_config, validate_config
from conftest import REPO


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
