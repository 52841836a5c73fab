"""The grid of variants (backbone x loss x sampling) and each variant's training settings."""

from __future__ import annotations

import itertools
from typing import Any

from cocoseg.train import TrainSettings


def expand_variants(config: dict[str, Any]) -> list[str]:
    """Names like ``mobilenet_v3_large-focal_tversky-oversample``: the explicit list, else the product."""
    grid = config["grid"]
    if grid.get("variants"):
        return list(grid["variants"])
    return ["-".join(parts) for parts in itertools.product(grid["backbones"], grid["losses"], grid["samplings"])]


def parse_variant(name: str) -> tuple[str, str, str]:
    parts = name.split("-")
    if len(parts) != 3:
        raise ValueError(f"variant {name!r} is not backbone-loss-sampling")
    return parts[0], parts[1], parts[2]


def settings_for(config: dict[str, Any], variant: str) -> TrainSettings:
    backbone, loss, sampling = parse_variant(variant)
    train = {**config["train"], **config["train"].get("overrides", {}).get(backbone, {})}
    model = config["model"]
    return TrainSettings(
        backbone=backbone, loss=loss, sampling=sampling,
        image_size=train["image_size"], epochs=train["epochs"], batch_size=train["batch_size"], lr=train["lr"],
        base_batch_size=train["base_batch_size"], lr_scaling=train["lr_scaling"],
        data_on_device=train["data_on_device"], compile=train["compile"], precision=train["precision"],
        weight_decay=train["weight_decay"], scheduler=train["scheduler"], warmup_epochs=train["warmup_epochs"],
        hflip=train["augment"]["hflip"], vflip=train["augment"]["vflip"], rotate=train["augment"]["rotate"],
        weights_backbone=model["weights_backbone"], aux_loss=model["aux_loss"], aux_weight=model["aux_weight"],
        bn_momentum=model["bn_momentum"], bn_recalibration=model["bn_recalibration"],
        class_weights=config["loss"]["class_weights"], repeat_threshold=config["sampling"]["repeat_threshold"],
        focal_tversky=dict(config["loss"]["focal_tversky"]),
        eval_batch_size=config["evaluate"]["batch_size"], num_workers=train["num_workers"], seed=train["seed"],
        device=train["device"], wandb_mode=config["wandb"]["mode"], wandb_project=config["wandb"]["project"],
    )
