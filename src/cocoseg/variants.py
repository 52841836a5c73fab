"""The grid of variants (backbone x loss x sampling), its seeds, and each training run's settings.

A variant (configuration) is trained once per seed of ``grid.seeds``; each (variant, seed) is
one run, in ``models/<variant>/seed<seed>/``. The seed changes the initialisation, the sampling
order and the augmentation, not the data split.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from typing import Any

from cocoseg.settings import CONFIG_KEYS, UNTRACKED_SETTINGS, TrainSettings


def expand_variants(config: dict[str, Any]) -> list[str]:
    """Names like ``mobilenet_v3_large-focal_tversky-oversample``: the explicit list, else the product."""
    grid = config["grid"]
    if grid["variants"]:
        return list(grid["variants"])
    return ["-".join(parts) for parts in itertools.product(grid["backbones"], grid["losses"], grid["samplings"])]


def grid_seeds(config: dict[str, Any]) -> list[int]:
    return list(config["grid"]["seeds"])


def parse_variant(name: str) -> tuple[str, str, str]:
    parts = name.split("-")
    if len(parts) != 3:
        raise ValueError(f"variant {name!r} is not backbone-loss-sampling")
    return parts[0], parts[1], parts[2]


def settings_for(config: dict[str, Any], variant: str, seed: int | None = None) -> TrainSettings:
    """The run's settings, each from its config key (``CONFIG_KEYS``); ``seed`` defaults to the grid's first."""
    backbone, loss, sampling = parse_variant(variant)
    train = {**config["train"], **config["train"]["overrides"].get(backbone, {})}
    chosen = {**config, "train": train}
    return TrainSettings(backbone=backbone, loss=loss, sampling=sampling,
                         seed=grid_seeds(config)[0] if seed is None else int(seed),
                         **{name: copy.deepcopy(_lookup(chosen, key)) for name, key in CONFIG_KEYS.items()})


def _lookup(config: dict[str, Any], key: str) -> Any:
    """The value of a dotted key in a validated config (which holds every key the schema gives a default)."""
    value = config
    for part in key.split("."):
        value = value[part]
    return value


def tracked_settings(config: dict[str, Any], variant: str, seed: int) -> dict[str, Any]:
    """The run's settings that Snakemake tracks as params: all but ``UNTRACKED_SETTINGS``."""
    settings = dataclasses.asdict(settings_for(config, variant, seed))
    return {name: value for name, value in settings.items() if name not in UNTRACKED_SETTINGS}


def run_settings(config: dict[str, Any], variant: str, tracked: dict[str, Any]) -> TrainSettings:
    """``tracked`` (the rule's params) completed by the untracked settings as the config has them now."""
    current = dataclasses.asdict(settings_for(config, variant))
    return TrainSettings(**tracked, **{name: current[name] for name in UNTRACKED_SETTINGS})
