"""The study's configuration: schema validation with messages that name the key, and the checks
a schema cannot express."""

from __future__ import annotations

import copy
import functools
import importlib.resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cocoseg.categories import COCO_CATEGORY_NAMES, check_class_names

# Package data, so that an installed cocoseg (not only a checkout) validates a config.
SCHEMA_PATH = Path(str(importlib.resources.files("cocoseg").joinpath("schema.yaml")))


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


def _key(path: Any) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{key}: {error.message}; allowed keys here: {allowed}"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed; use one of {error.validator_value}"
    return f"{key}: {error.message}"


def load_schema(schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(schema_path, encoding="utf-8") as f:
        return yaml.safe_load(f)


@functools.cache
def _package_schema() -> dict[str, Any]:
    return load_schema(SCHEMA_PATH)


def schema_default(key: str) -> Any:
    """The schema's default of a dotted config key (``train.augment.vflip``): the one place defaults are written.

    The settings, the command line's options and the library's parameters that stand for a config key take
    their defaults from here. An object's default comes with its keys' defaults filled in, as validation fills
    them (``loss.focal_tversky`` gives alpha, beta, gamma and smooth).
    """
    node = _package_schema()
    for part in key.split("."):
        node = node.get("properties", {}).get(part)
        if node is None:
            raise KeyError(f"{SCHEMA_PATH} has no config key {key!r}")
    if "default" not in node:
        raise KeyError(f"{SCHEMA_PATH} gives {key!r} no default")
    return _filled(node)


def _filled(node: dict[str, Any]) -> Any:
    value = copy.deepcopy(node["default"])
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if "default" in child:
                value.setdefault(name, _filled(child))
    return value


def validate_config(
    config: dict[str, Any], schema_path: str | Path = SCHEMA_PATH, source: str = "config"
) -> dict[str, Any]:
    """Raise ConfigError naming every bad key; return a copy with the schema's defaults filled in."""
    from snakemake.utils import validate

    validator = jsonschema.Draft202012Validator(load_schema(schema_path))
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        details = "\n  ".join(_describe(e) for e in errors)
        raise ConfigError(f"invalid {source}:\n  {details}")
    filled = copy.deepcopy(config)
    validate(filled, str(schema_path), set_default=True)
    dataset = filled["dataset"]
    if dataset["source"] in ("download", "synthetic"):
        try:
            check_class_names(dataset["classes"], COCO_CATEGORY_NAMES, "COCO instances")
        except ValueError as e:
            raise ConfigError(f"invalid {source}: {e}") from e
    fractions = [filled["split"][name] for name in ("train", "val", "test")]
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"invalid {source}: split.train + split.val + split.test = {sum(fractions)}, must be 1")
    return filled


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    return validate_config(config, schema_path, source=str(path))
