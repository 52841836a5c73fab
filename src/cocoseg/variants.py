"""The grid of variants (backbone x loss x sampling), its seeds, and each training run's settings.

A variant (configuration) is trained once per seed of ``grid.seeds``; each (variant, seed) is
one run, in ``models/<variant>/seed<seed>/``. The seed changes the initialisation, the sampling
order and the augmentation, not the data split.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from cocoseg.settings import UNTRACKED_SETTINGS, TrainSettings


def expand_variants(config: dict[str, Any]) -> list[str]:
    """Names like ``mobilenet_v3_large-focal_tversky-oversample``: the explicit list, else the product."""
    grid = config["grid"]
    if grid.get("variants"):
        return list(grid["variants"])
    return ["-".join(parts) for parts in itertools.product(grid["backbones"], grid["losses"], grid["samplings"])]


def grid_seeds(config: dict[str, Any]) -> list[int]:
    return list(config["grid"].get("seeds", [0]))


def run_dir_name(variant: str, seed: int) -> str:
    """Where a run lives under ``models/``."""
    return f"{variant}/seed{seed}"


def parse_variant(name: str) -> tuple[str, str, str]:
    parts = name.split("-")
    if len(parts) != 3:
        raise ValueError(f"variant {name!r} is not backbone-loss-sampling")
    return parts[0], parts[1], parts[2]


def settings_for(config: dict[str, Any], variant: str, seed: int | None = None) -> TrainSettings:
    """The run's settings; ``seed`` defaults to the grid's first."""
    backbone, loss, sampling = parse_variant(variant)
    train = {**config["train"], **config["train"].get("overrides", {}).get(backbone, {})}
    model = config["model"]
    return TrainSettings(
        backbone=backbone, loss=loss, sampling=sampling,
        image_size=train["image_size"], epochs=train["epochs"], budget=train["budget"],
        batch_size=train["batch_size"], lr=train["lr"],
        base_batch_size=train["base_batch_size"], lr_scaling=train["lr_scaling"],
        data_on_device=train["data_on_device"], compile=train["compile"], precision=train["precision"],
        weight_decay=train["weight_decay"], scheduler=train["scheduler"], warmup_epochs=train["warmup_epochs"],
        hflip=train["augment"]["hflip"], vflip=train["augment"]["vflip"], rotate=train["augment"]["rotate"],
        weights_backbone=model["weights_backbone"], aux_loss=model["aux_loss"], aux_weight=model["aux_weight"],
        bn_momentum=model["bn_momentum"], bn_recalibration=model["bn_recalibration"],
        class_weights=config["loss"]["class_weights"], repeat_threshold=config["sampling"]["repeat_threshold"],
        focal_tversky=dict(config["loss"]["focal_tversky"]),
        eval_batch_size=config["evaluate"]["batch_size"], num_workers=train["num_workers"],
        seed=grid_seeds(config)[0] if seed is None else int(seed),
        device=train["device"], wandb_mode=config["wandb"]["mode"], wandb_project=config["wandb"]["project"],
    )


def tracked_settings(config: dict[str, Any], variant: str, seed: int) -> dict[str, Any]:
    """The run's settings that Snakemake tracks as params: all but ``UNTRACKED_SETTINGS``."""
    settings = dataclasses.asdict(settings_for(config, variant, seed))
    return {name: value for name, value in settings.items() if name not in UNTRACKED_SETTINGS}


def run_settings(config: dict[str, Any], variant: str, tracked: dict[str, Any]) -> TrainSettings:
    """``tracked`` (the rule's params) completed by the untracked settings as the config has them now."""
    current = dataclasses.asdict(settings_for(config, variant))
    return TrainSettings(**tracked, **{name: current[name] for name in UNTRACKED_SETTINGS})
