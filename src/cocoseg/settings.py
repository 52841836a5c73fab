"""A training run's settings: light (no torch), so that parsing the Snakefile, validating a
config, and loading a model for evaluation need none of the trainer's imports. Their defaults are
the schema's (``cocoseg.config.schema_default``), the one place defaults are written."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

from cocoseg.config import schema_default

# Settings that change how a run is executed, not what it computes: a checkpoint resumes across them.
# ``precision`` is among them as written (auto, bf16, fp32), but what it resolves to on this device
# is in the fingerprint: bf16 and fp32 round differently, so a run never silently continues in the
# other one (``auto`` moved to a CPU without bf16 starts afresh), while ``auto`` and ``bf16``, the
# same numerics on a bf16 machine, resume each other.
EXECUTION_SETTINGS = ("num_workers", "eval_batch_size", "device", "wandb_mode", "wandb_project", "compile",
                      "precision")
# The execution settings that Snakemake does not track (rule params hold the others): changing one, say
# num_workers, reruns no training. ``precision`` is tracked, as bf16 and fp32 runs differ.
UNTRACKED_SETTINGS = tuple(name for name in EXECUTION_SETTINGS if name != "precision")


def _config(key: str) -> Any:
    """A field set from the config's ``key`` (dotted), its default the schema's: ``variants.settings_for`` reads
    the key from each field's metadata, so each setting's key and default are written once."""
    default = schema_default(key)
    if isinstance(default, dict | list):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"config": key})
    return field(default=default, metadata={"config": key})


@dataclass(frozen=True)
class TrainSettings:
    """One run's settings; every field but the variant's three and ``seed`` is a config key (``CONFIG_KEYS``)."""

    backbone: str
    loss: str
    sampling: str
    image_size: int = _config("train.image_size")
    epochs: int = _config("train.epochs")
    budget: str = _config("train.budget")  # steps | epochs: see epoch_size()
    batch_size: int = _config("train.batch_size")
    lr: float = _config("train.lr")
    lr_scaling: str = _config("train.lr_scaling")  # sqrt | linear | none: how lr follows batch_size / base_batch_size
    base_batch_size: int = _config("train.base_batch_size")
    weight_decay: float = _config("train.weight_decay")
    scheduler: str = _config("train.scheduler")  # none | cosine | poly
    warmup_epochs: int = _config("train.warmup_epochs")
    hflip: float = _config("train.augment.hflip")
    vflip: float = _config("train.augment.vflip")
    rotate: float = _config("train.augment.rotate")
    weights_backbone: str = _config("model.weights_backbone")
    aux_loss: bool = _config("model.aux_loss")
    aux_weight: float = _config("model.aux_weight")
    bn_momentum: float | None = _config("model.bn_momentum")
    bn_recalibration: int = _config("model.bn_recalibration")
    class_weights: str = _config("loss.class_weights")
    repeat_threshold: float = _config("sampling.repeat_threshold")
    focal_tversky: dict[str, float] = _config("loss.focal_tversky")  # noqa: RUF009 - a field, its default a copy
    data_on_device: str = _config("train.data_on_device")  # auto | always | never: the train split on the device
    compile: bool = _config("train.compile")
    precision: str = _config("train.precision")  # auto | bf16 | fp32: autocast dtype, resolved per device
    eval_batch_size: int = _config("evaluate.batch_size")
    num_workers: int = _config("train.num_workers")
    # One of grid.seeds, a list: the run's own, given by settings_for; by default the grid's default first seed.
    seed: int = schema_default("grid.seeds")[0]
    device: str = _config("train.device")
    wandb_mode: str = _config("wandb.mode")
    wandb_project: str = _config("wandb.project")


# Each setting's config key (dotted), from the fields above.
CONFIG_KEYS: dict[str, str] = {f.name: f.metadata["config"] for f in fields(TrainSettings) if "config" in f.metadata}


def scaled_lr(settings: TrainSettings) -> float:
    """``lr`` is the rate for ``base_batch_size``; another batch size scales it.

    ``sqrt`` multiplies by sqrt(batch_size / base_batch_size), the rule for Adam (Malladi et al.,
    "On the SDEs and scaling rules for adaptive gradient algorithms", NeurIPS 2022); ``linear``
    by the ratio itself, the rule for SGD (Goyal et al. 2017); ``none`` keeps ``lr``.
    """
    ratio = settings.batch_size / settings.base_batch_size
    factors = {"sqrt": math.sqrt(ratio), "linear": ratio, "none": 1.0}
    if settings.lr_scaling not in factors:
        raise ValueError(f"unknown lr_scaling {settings.lr_scaling!r}; use one of {', '.join(factors)}")
    return settings.lr * factors[settings.lr_scaling]
