"""Defaults live in the schema: the settings, the command line and the library take them from there, so a
default written a second time with another value fails here."""

import argparse
import dataclasses
import inspect
import json

import pytest
import yaml
from conftest import REPO

from cocoseg.cli import build_parser
from cocoseg.config import validate_config
from cocoseg.data.download import download
from cocoseg.data.masks import build_masks, render_mask
from cocoseg.data.select import select_images
from cocoseg.data.split import split_manifest
from cocoseg.data.synth import generate
from cocoseg.deployment import deployment_table, export_verified, verify, write_deployment
from cocoseg.evaluate import evaluate
from cocoseg.losses import FocalTversky, build_loss, class_weights
from cocoseg.models import build_model
from cocoseg.predict import predict
from cocoseg.settings import CONFIG_KEYS, TrainSettings
from cocoseg.variants import settings_for

VARIANT = "resnet50-focal_tversky-oversample"
# The settings named otherwise than the last part of their config key.
RENAMED = {"eval_batch_size": "evaluate.batch_size", "wandb_mode": "wandb.mode", "wandb_project": "wandb.project"}


def schema_defaults(node=None, prefix=""):
    """Every dotted key of schema.yaml with its ``default:`` as written there, read without cocoseg's code."""
    if node is None:
        node = yaml.safe_load((REPO / "src" / "cocoseg" / "schema.yaml").read_text())
    found = {}
    for name, child in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        if "default" in child:
            found[key] = child["default"]
        found.update(schema_defaults(child, f"{key}."))
    return found


def minimal_config() -> dict:
    """Only what the schema requires: everything else takes its default."""
    return validate_config({
        "run": "minimal", "dataset": {"source": "synthetic", "classes": ["person", "car"]},
        "split": {"train": 0.8, "val": 0.1, "test": 0.1},
        "grid": {"backbones": ["resnet50"], "losses": ["focal_tversky"], "samplings": ["oversample"]}, "train": {},
    })


def test_every_setting_defaults_to_the_schemas_default_of_its_key():
    defaults, written = schema_defaults(), TrainSettings("b", "l", "s")
    for name, key in CONFIG_KEYS.items():
        expected = defaults[key]
        if isinstance(expected, dict):  # an object: its keys' own defaults, as validation fills them in
            expected = {**{k[len(key) + 1:]: v for k, v in defaults.items() if k.startswith(f"{key}.")}, **expected}
        assert getattr(written, name) == expected, (name, key)
    assert written.seed == defaults["grid.seeds"][0]


def test_every_setting_but_the_variant_and_seed_has_a_config_key_of_its_own_name():
    names = {field.name for field in dataclasses.fields(TrainSettings)}
    assert set(CONFIG_KEYS) == names - {"backbone", "loss", "sampling", "seed"}
    assert len(set(CONFIG_KEYS.values())) == len(CONFIG_KEYS)
    for name, key in CONFIG_KEYS.items():
        assert key == RENAMED[name] if name in RENAMED else key.endswith(f".{name}"), (name, key)


def test_a_minimal_config_gives_the_default_settings():
    assert settings_for(minimal_config(), VARIANT) == TrainSettings("resnet50", "focal_tversky", "oversample")


def test_every_setting_is_read_from_its_own_key():
    config = minimal_config()
    for name, key in CONFIG_KEYS.items():
        *parents, last = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = f"marker of {name}"
    settings = settings_for(config, VARIANT, seed=7)
    assert all(getattr(settings, name) == f"marker of {name}" for name in CONFIG_KEYS)
    assert settings.seed == 7


def test_a_backbones_overrides_win_over_the_train_section():
    config = minimal_config()
    config["train"]["overrides"] = {"resnet50": {"batch_size": 8}, "mobilenet_v3_large": {"batch_size": 16}}
    assert settings_for(config, VARIANT).batch_size == 8
    assert settings_for(config, "mobilenet_v3_large-cross_entropy-uniform").batch_size == 16


def test_a_checkpoints_settings_reload_and_an_older_ones_missing_keys_take_the_schemas_default():
    settings = settings_for(minimal_config(), VARIANT, seed=3)
    assert TrainSettings(**dataclasses.asdict(settings)) == settings  # as evaluate and resume reload state["settings"]
    older = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("precision", "bn_recalibration")}
    reloaded = TrainSettings(**older)
    assert (reloaded.precision, reloaded.bn_recalibration) == (schema_defaults()["train.precision"],
                                                               schema_defaults()["model.bn_recalibration"])


# Each command-line option that stands for a config key, written here independently of cli.py. Not among them:
# masks --num-shards (default 1, every mask: the workflow's masks.shards jobs write the same masks) and split
# --fractions (split.train, split.val and split.test have no default: a config must give them).
CLI_OPTIONS = {
    ("synth", "--num-images"): "dataset.synthetic.num_images", ("synth", "--seed"): "dataset.synthetic.seed",
    ("synth", "--size"): "dataset.synthetic.sizes",
    ("download", "--retries"): "dataset.download.retries", ("download", "--timeout"): "dataset.download.timeout",
    ("select", "--max-images"): "dataset.max_images", ("select", "--seed"): "dataset.seed",
    ("select", "--crowd"): "dataset.crowd", ("masks", "--crowd"): "dataset.crowd", ("split", "--seed"): "split.seed",
    ("evaluate", "--batch-size"): "evaluate.batch_size", ("evaluate", "--num-workers"): "train.num_workers",
    ("evaluate", "--device"): "train.device", ("evaluate", "--engine"): "evaluate.engine",
    ("predict", "--device"): "train.device",
}


def option(step: str, flag: str) -> argparse.Action:
    steps = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return next(a for a in steps[step]._actions if flag in a.option_strings)


@pytest.mark.parametrize("step, flag", list(CLI_OPTIONS))
def test_every_command_line_option_of_a_config_key_defaults_to_the_schemas_default_and_says_so(step, flag):
    key, action = CLI_OPTIONS[step, flag], option(step, flag)
    assert json.loads(json.dumps(action.default)) == schema_defaults()[key]  # tuples as the YAML's lists
    assert key in " ".join(action.help.split())  # --help names where the default comes from


FOCAL_TVERSKY = {name: f"loss.focal_tversky.{name}" for name in ("alpha", "beta", "gamma", "smooth")}
# Each library parameter that stands for a config key (the workflow passes the key's value), written here
# independently of the library. Those defaulting to None (max_images, bn_momentum) are among them: null there.
LIBRARY_PARAMETERS = {
    download: {"retries": "dataset.download.retries", "timeout": "dataset.download.timeout"},
    render_mask: {"crowd": "dataset.crowd"}, build_masks: {"crowd": "dataset.crowd"},
    select_images: {"max_images": "dataset.max_images", "seed": "dataset.seed", "crowd": "dataset.crowd"},
    split_manifest: {"seed": "split.seed"},
    generate: {"num_images": "dataset.synthetic.num_images", "seed": "dataset.synthetic.seed",
               "sizes": "dataset.synthetic.sizes"},
    evaluate: {"num_workers": "train.num_workers", "batch_size": "evaluate.batch_size", "device_name": "train.device",
               "engine": "evaluate.engine"},
    predict: {"device_name": "train.device"},
    verify: {"batch_size": "export.batch_size", "logit_tolerance": "export.logit_tolerance",
             "miou_tolerance": "export.miou_tolerance"},
    export_verified: {"batch_size": "export.batch_size", "logit_tolerance": "export.logit_tolerance",
                      "miou_tolerance": "export.miou_tolerance"},
    deployment_table: {"batch_size": "export.batch_size", "seconds": "export.timing_seconds"},
    write_deployment: {"batch_size": "export.batch_size", "seconds": "export.timing_seconds"},
    class_weights: {"scheme": "loss.class_weights"}, build_loss: FOCAL_TVERSKY, FocalTversky: FOCAL_TVERSKY,
    build_model: {"aux_loss": "model.aux_loss", "bn_momentum": "model.bn_momentum"},
}


@pytest.mark.parametrize("function", list(LIBRARY_PARAMETERS), ids=lambda function: function.__name__)
def test_every_library_parameter_of_a_config_key_defaults_to_the_schemas_default(function):
    parameters = inspect.signature(function).parameters
    for name, key in LIBRARY_PARAMETERS[function].items():
        assert json.loads(json.dumps(parameters[name].default)) == schema_defaults()[key], (name, key)


def test_a_model_is_built_with_imagenet_weights_only_when_asked():
    """The config's default, imagenet, may download: build_model has none, so a caller says which it wants."""
    assert inspect.signature(build_model).parameters["weights_backbone"].default is inspect.Parameter.empty
