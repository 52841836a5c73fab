"""A training run's settings: light (no torch), so that parsing the Snakefile, validating a
config, and loading a model for evaluation need none of the trainer's imports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class TrainSettings:
    backbone: str
    loss: str
    sampling: str
    image_size: int = 256
    epochs: int = 30
    budget: str = "steps"  # steps | epochs: see epoch_size()
    batch_size: int = 4
    lr: float = 1e-4
    lr_scaling: str = "sqrt"  # sqrt | linear | none: how lr follows batch_size / base_batch_size
    base_batch_size: int = 4
    weight_decay: float = 0.0
    scheduler: str = "none"  # none | cosine | poly
    warmup_epochs: int = 0
    hflip: float = 0.5
    vflip: float = 0.5
    rotate: float = 15.0
    weights_backbone: str = "none"
    aux_loss: bool = False
    aux_weight: float = 0.4
    bn_momentum: float | None = None
    bn_recalibration: int = 0
    class_weights: str = "inverse_sqrt"
    repeat_threshold: float = 0.3
    focal_tversky: dict[str, float] = field(default_factory=lambda: {"alpha": 0.3, "beta": 0.7, "gamma": 0.75})
    data_on_device: str = "auto"  # auto | always | never: keep the train split on the device, augment there
    compile: bool = False
    precision: str = "auto"  # auto | bf16 | fp32: autocast dtype, resolved per device (cocoseg.device)
    eval_batch_size: int = 8
    num_workers: int = 2
    seed: int = 0
    device: str = "auto"
    wandb_mode: str = "offline"
    wandb_project: str = "cocoseg"


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
